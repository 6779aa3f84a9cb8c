"""The flags that join a command to a multi-process run (`jax.distributed`), shared by every entry point:

    --coordinator_address=HOST:PORT --num_processes=N --process_id=I   # explicit, e.g. CPU processes on one machine
    --distributed=auto                                                 # SLURM / Open MPI / TPU detect them

Without them nothing changes (one process). `start` must run before anything touches a device: the entry points
call it first thing in their main. See `pvpp.parallel.distributed` for what the processes share.
"""

from __future__ import annotations

from absl import app, flags

from pvpp.parallel import distributed, liveness

_DEFAULTS = distributed.DistributedConfig()


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the start-up flags on `flag_values`."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_enum(
        "distributed",
        "off",
        ["off", "auto"],
        "auto: join a multi-process run whose settings jax detects (SLURM, Open MPI, TPU); the explicit flags "
        "below override what it detects",
        **fv,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0's coordination service (several processes)", **fv
    )
    flags.DEFINE_integer("num_processes", None, "processes of the run (with --coordinator_address)", **fv)
    flags.DEFINE_integer("process_id", None, "this process's index, 0..num_processes-1", **fv)
    flags.DEFINE_integer(
        "heartbeat_timeout",
        _DEFAULTS.heartbeat_timeout,
        "seconds after which a silent process counts as dead and the others stop (pvpp's watch; JAX's own "
        f"heartbeat check waits twice as long, at least {liveness.BACKSTOP_FLOOR} s)",
        **fv,
    )
    flags.DEFINE_integer(
        "shutdown_timeout",
        _DEFAULTS.shutdown_timeout,
        "seconds the processes wait for each other at exit (JAX's shutdown barrier)",
        **fv,
    )
    flags.DEFINE_integer(
        "initialization_timeout",
        _DEFAULTS.initialization_timeout,
        "seconds to wait for every process to join",
        **fv,
    )


def config_from_flags(flag_values: flags.FlagValues) -> distributed.DistributedConfig:
    """The start-up flags as a DistributedConfig; app.UsageError naming the flag for a bad value."""
    f = flag_values
    try:
        return distributed.DistributedConfig(
            coordinator_address=f.coordinator_address,
            num_processes=f.num_processes,
            process_id=f.process_id,
            auto=f.distributed == "auto",
            heartbeat_timeout=f.heartbeat_timeout,
            initialization_timeout=f.initialization_timeout,
            shutdown_timeout=f.shutdown_timeout,
        )
    except (TypeError, ValueError) as err:
        raise app.UsageError(f"--{err}") from err  # the messages start with the field (= flag) name


def start(flag_values: flags.FlagValues) -> None:
    """Joins the multi-process run the flags describe (nothing without them); app.UsageError for bad flags or a
    machine that cannot run it (CPU processes without a collectives implementation)."""
    config = config_from_flags(flag_values)
    try:
        distributed.initialize(config)
    except RuntimeError as err:
        raise app.UsageError(f"--distributed / --coordinator_address: {err}") from err

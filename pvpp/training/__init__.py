"""Training, one job per file (the public names are gathered in `pvpp.train`):

    config.py         TrainConfig, DataConfig, StepConfig (what the compiled step reads), each field's kind on
                      resume (`pvpp.settings`)
    resume.py         what a resumed run changed, and config.json's segments (the settings from each resume on)
    state.py          TrainState, its value at step 0 and the one recipe that builds it (`state_initializer`)
    step.py           the per-device train and evaluation steps (pmapped, axis 'batch')
    compiled.py       the compiled functions of a run, cached per (model, StepConfig, devices), with trace counts
    devices.py        the device layout, replication, and the prefetching thread
    periodic_eval.py  the cheap evaluation during training
    loop.py           run_training / train_and_evaluate: the loop, checkpoints, metrics, the NaN guard, the
                      graceful stop on SIGTERM / SIGINT (`pvpp.runs.stopping`)

The files of a run (config.json, checkpoints, the EMA export) are owned by `pvpp.runs.workdir`. This package
imports nothing on its own, so `pvpp.runs.workdir` (used by evaluation and sampling) can import `state` without
importing the loop.
"""

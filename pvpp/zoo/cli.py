"""`python -m pvpp.zoo`: list, show, verify, export and package zoo entries.

    python -m pvpp.zoo list [--dataset=caltech101] [--prior=rbm] [--markdown]
    python -m pvpp.zoo show NAME [--json]
    python -m pvpp.zoo verify [NAME] [--data_dir=DIR]      # every entry without NAME; with data: the check subset
    python -m pvpp.zoo export NAME DIR [--overwrite]       # then: evaluate / sample --checkpoint=DIR
    python -m pvpp.zoo package --workdir=RUN --eval_json=RUN/eval/....json --name=NAME --budget="..."
        [--destination=DIR | --destination=shipped] [--revision=N] [--command="python -m ..."]
        [--flag_file=FILE] [--data_dir=DIR] [--machine="..."]

A problem of the input (an unknown name, a corrupt file, a card that fails its schema) ends the command with
status 1 and one line, `pvpp: ErrorType: message`, as the other pvpp commands do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pvpp.experiments.errors import STOPPING_ERRORS
from pvpp.runs import checkpoint
from pvpp.zoo import access, catalog, check_subset, registry
from pvpp.zoo.errors import ZooError
from pvpp.zoo.packaging import package as zoo_package

ERRORS = (ZooError, checkpoint.CorruptCheckpointError, *STOPPING_ERRORS)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; a user error exits with `pvpp: ErrorType: message` (status 1). Returns 0."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except ERRORS as err:
        sys.exit(f"pvpp: {type(err).__name__}: {err}")
    return 0


def describe(card: dict[str, Any], entry: registry.Entry) -> str:
    """A few lines about an entry: what it is, its headline and the paper's, the budget, where it lies."""
    identity, result, data, paper = card["identity"], card["result"], card["data"], card["paper"]
    log_z = result["log_partition"]
    lines = [
        f"{identity['resolved_name']} ({'shipped' if entry.shipped else 'user entry'}, {entry.folder})",
        f"  data: {data['dataset']} / {result['split']} ({result['num_images']} of {data['split_size']} images), "
        f"{data['binarization']} binarization",
        f"  model: prior {card['model']['prior']}, {card['files']['num_parameters']:,} parameters, trained "
        f"{card['training']['steps']} steps",
        f"  test LL: {catalog.headline(result)} (k = {result['k']}, s.e. over images "
        f"{_number(result['standard_error_nats'])} nats; -ELBO {_number(result['negative_elbo_nats'])}, "
        f"KL {_number(result['kl_nats'])})",
    ]
    if log_z is not None:
        lines.append(
            f"  log Z: {log_z['estimate']:.4f} in [{_number(log_z['lower'])}, {_number(log_z['upper'])}] "
            f"({log_z['how']})"
        )
    lines += [
        f"  paper: {'n/a' if paper['test_log_likelihood'] is None else format(paper['test_log_likelihood'], '.2f')} "
        f"{paper['units']} ({paper['label']})",
        f"  budget: {card['budget']}",
        f"  evaluated with: {result['command']}",
        f"  pvpp {identity['pvpp_version']}, commit {identity['git_commit'] or 'unknown'}",
    ]
    return "\n".join(lines)


def _list(args) -> None:
    cards = catalog.list(dataset=args.dataset, prior=args.prior)
    print(cards.markdown() if args.markdown else cards.table())


def _show(args) -> None:
    card = catalog.card(args.name)
    if args.json:
        print(json.dumps(card, indent=2))
        return
    print(describe(card, registry.resolve(card["identity"]["resolved_name"])))


def _verify(args) -> None:
    wanted = [registry.resolve(args.name)] if args.name else registry.entries()
    failures = []
    for entry in wanted:
        try:
            checked = access.verify(entry.resolved)
            line = (
                f"ok      {entry.resolved}: digests, arrays, finiteness, reference outputs (largest deviation "
                f"{checked.reference_error:.1e})"
            )
            if args.data_dir:
                again = check_subset.reproduce_entry(entry.resolved, args.data_dir)
                if not again.ok:
                    raise ZooError(
                        f"zoo entry {entry.resolved}: the check subset evaluates to other values (largest "
                        f"difference {again.max_abs_difference:.3g} nats, tolerance {again.basis})"
                    )
                line += f"; check subset within {again.max_abs_difference:.1e} nats"
            print(line)
        except ERRORS as err:
            failures.append(entry.resolved)
            print(f"FAILED  {entry.resolved}: {type(err).__name__}: {err}")
    if not wanted:
        print("(no entries)")
    if failures:
        raise ZooError(f"{len(failures)} of {len(wanted)} zoo entries failed verification: {', '.join(failures)}")


def _export(args) -> None:
    path = access.export(args.name, args.directory, overwrite=args.overwrite)
    print(f"exported {registry.resolve(args.name).resolved} to {path}")


def _package(args) -> None:
    destination = registry.SHIPPED_DIR if args.destination == "shipped" else args.destination
    entry = zoo_package(
        args.workdir, args.eval_json, args.name, revision=args.revision, destination=destination,
        budget=args.budget, command=args.command, flag_file=args.flag_file, data_dir=args.data_dir,
        machine=args.machine, check_size=args.check_size, monte_carlo_seeds=args.monte_carlo_seeds,
    )
    print(f"packaged {entry.resolved} in {entry.folder}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pvpp.zoo", description="pvpp's model zoo.")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="every entry with its data set, prior, parameters and test LL")
    listing.add_argument("--dataset", default=None, help="a name part (caltech101) or a pvpp data set name")
    listing.add_argument("--prior", default=None, help="a name part (rbm, pixelcnn) or a ModelConfig prior")
    listing.add_argument("--markdown", action="store_true", help="a Markdown table (the README's results table)")
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", help="an entry's card")
    show.add_argument("name", help="NAME or NAME@rN")
    show.add_argument("--json", action="store_true", help="the whole card as JSON")
    show.set_defaults(run=_show)

    verify = commands.add_parser("verify", help="digests, arrays, finiteness and reference outputs of entries")
    verify.add_argument("name", nargs="?", default=None, help="NAME or NAME@rN (default: every entry)")
    verify.add_argument("--data_dir", default=None, help="with the real data: also re-evaluate the check subsets")
    verify.set_defaults(run=_verify)

    export = commands.add_parser("export", help="write an entry as an orbax export (for --checkpoint=DIR)")
    export.add_argument("name", help="NAME or NAME@rN")
    export.add_argument("directory", help="the export directory to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export there")
    export.set_defaults(run=_export)

    package = commands.add_parser("package", help="turn a finished run and its evaluation into an entry")
    package.add_argument("--workdir", required=True, help="the training workdir (config.json, ema_params)")
    package.add_argument("--eval_json", required=True, help="its evaluation (python -m pvpp.experiments.evaluate)")
    package.add_argument("--name", required=True, help="<dataset>-<prior>-<budget>, e.g. caltech101-rbm-cpubudget")
    package.add_argument("--budget", required=True, help="what the training was allowed, for the card")
    package.add_argument("--destination", default=None, help="folder for the entry, or 'shipped' (pvpp/zoo/models)")
    package.add_argument("--revision", type=int, default=None, help="default: one more than the newest")
    package.add_argument("--command", default=None, help="the exact evaluate command (default: the JSON's)")
    package.add_argument("--flag_file", default=None, help="the training's flag file, recorded with its text")
    package.add_argument("--data_dir", default=None, help="the original data (default: the run's, PVPP_DATA_DIR)")
    package.add_argument("--machine", default=None, help="a description of the training machine")
    package.add_argument("--check_size", type=int, default=check_subset.DEFAULT_SIZE, help="check-subset images")
    package.add_argument("--monte_carlo_seeds", type=int, default=2, help="0 or >= 2 seeds for the spread")
    package.set_defaults(run=_package)
    return parser

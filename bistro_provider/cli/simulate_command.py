"""`airflow bistro simulate`: run the fleet simulator on a config and print its report.

The command definition lives here with its arguments; the simulator is imported only when
the command runs, so `airflow --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from airflow.cli.cli_config import ActionCommand, Arg, lazy_load_command

DISTRIBUTION_CHOICES = ("uniform", "fixed", "exponential")

ARG_SIMULATE_CONFIG = Arg(
    ("--config",),
    help="Bistro config file (JSON, or YAML with the same keys); default: the config_file "
    "option in the bistro section of airflow.cfg",
    default=None,
)
ARG_DURATION_MEAN = Arg(
    ("--duration-mean",),
    help="Mean task duration d, in simulated seconds (default 300)",
    type=float,
    default=300.0,
)
ARG_DISTRIBUTION = Arg(
    ("--distribution",),
    help="Task durations: uniform in [0, 2d] (default), fixed at d, or exponential with mean d",
    choices=DISTRIBUTION_CHOICES,
    default="uniform",
)
ARG_CHURN = Arg(
    ("--churn",),
    help="Fraction of the first level's nodes (hosts) removed per simulated hour; each one "
    "comes back an hour later (default 0)",
    type=float,
    default=0.0,
)
ARG_SIMULATE_SEED = Arg(
    ("--seed",),
    help="Seed of task durations, churn and the scheduler's random choices (default 0)",
    type=int,
    default=0,
)
ARG_FULL_PASS = Arg(
    ("--full-pass",),
    help="After each event run a full pass over every job and candidate, instead of "
    "re-examining only the candidates under the nodes a finished task freed",
    action="store_true",
)
ARG_CHARGE_PASS_TIME = Arg(
    ("--charge-pass-time",),
    help="Advance the simulated clock by the CPU time of each scheduling step, so slow "
    "passes delay starts (results then depend on this machine)",
    action="store_true",
)
ARG_SIMULATE_JSON = Arg(("--json",), help="Print JSON instead of text", action="store_true")

SIMULATE_COMMAND = ActionCommand(
    name="simulate",
    help="Simulate a fleet running the config's jobs on its nodes, without Airflow",
    description="Builds the forest from the config's node sources, gives every task a "
    "random duration and replays the run event by event through the real admission core. "
    "Prints the makespan, normalized throughput (running tasks divided by what the "
    "resources allow) and the time per admission pass. Exit status: 0 simulated, 1 invalid "
    "config or a node source failed, 2 bad arguments.",
    func=lazy_load_command("bistro_provider.cli.simulate_command.simulate"),
    args=(
        ARG_SIMULATE_CONFIG,
        ARG_DURATION_MEAN,
        ARG_DISTRIBUTION,
        ARG_CHURN,
        ARG_SIMULATE_SEED,
        ARG_FULL_PASS,
        ARG_CHARGE_PASS_TIME,
        ARG_SIMULATE_JSON,
    ),
)


def _exit(message: str, status: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _config_path(args: Any) -> str:
    if args.config:
        return str(args.config)
    from airflow.configuration import conf

    path = conf.get("bistro", "config_file", fallback="")
    if not path:
        _exit("no config file; pass --config FILE or set [bistro] config_file", 2)
    return str(path)


def _load_config(args: Any) -> Any:
    from bistro_provider.core.config import load_config
    from bistro_provider.core.errors import ConfigError

    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        sys.exit(1)
    except (OSError, ValueError) as exc:
        _exit(str(exc), 1)


def simulate(args: Any) -> None:
    """Run `airflow bistro simulate` with parsed `args`."""
    from bistro_provider.core.errors import NodeSourceError
    from bistro_provider.simulator import SimulationOptions
    from bistro_provider.simulator import simulate as run_simulation

    config = _load_config(args)
    try:
        options = SimulationOptions(
            duration_mean=args.duration_mean,
            distribution=args.distribution,
            churn=args.churn,
            seed=args.seed,
            mode="full" if args.full_pass else "incremental",
            charge_pass_time=args.charge_pass_time,
        )
    except ValueError as exc:
        _exit(str(exc), 2)
    try:
        report = run_simulation(config, options)
    except NodeSourceError as exc:
        _exit(str(exc), 1)
    payload = report.to_json()
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    for key, value in payload.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key}: {shown}")

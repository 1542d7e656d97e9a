"""The `airflow bistro` command group, registered through the provider's `cli` key.

Commands are imported lazily so that `airflow --help` stays fast.
"""

from __future__ import annotations

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

ARG_CONFIG = Arg(
    ("--config",),
    help="Bistro config file (JSON, or YAML with the same keys); default: [bistro] config_file",
    default=None,
)
ARG_JSON = Arg(("--json",), help="Print JSON instead of text", action="store_true")
ARG_NOW = Arg(("--now",), help="Fetch nodes as if the time were this epoch second", type=float)
ARG_RUNNING = Arg(
    ("--running",),
    help="JSON file listing running tasks: [{job, node, holdings?}]; holdings default to "
    "what the current config gives the task",
    default=None,
)
ARG_JOB_ORDER = Arg(
    ("--job-order",),
    help="config: keep jobs in file order (reproducible); shuffled: shuffle them as the "
    "scheduler does (default)",
    choices=("config", "shuffled"),
    default="shuffled",
)
ARG_SEED = Arg(("--seed",), help="Seed of the random choices (node order, job order)", type=int)

COMMANDS = (
    ActionCommand(
        name="validate",
        help="Check a Bistro config and list every error with its key path",
        description="Exit status: 0 valid, 1 errors found (settings or any job), "
        "2 bad arguments.",
        func=lazy_load_command("bistro_provider.cli.commands.validate"),
        args=(ARG_CONFIG, ARG_JSON),
    ),
    ActionCommand(
        name="nodes",
        help="Fetch all node sources once and print the forest",
        description="Prints each node's name, level, parent, enabled flag and tags. Exit "
        "status: 0 fetched, 1 invalid config or a node source failed.",
        func=lazy_load_command("bistro_provider.cli.commands.nodes"),
        args=(ARG_CONFIG, ARG_NOW, ARG_JSON),
    ),
    ActionCommand(
        name="plan",
        help="Show the tasks one admission pass would start, in start order",
        description="Prints every node's availability before the pass, then each start "
        "with its job, node and the amounts it takes per node. Exit status: 0 planned, "
        "1 invalid config or a node source failed.",
        func=lazy_load_command("bistro_provider.cli.commands.plan"),
        args=(ARG_CONFIG, ARG_RUNNING, ARG_JOB_ORDER, ARG_SEED, ARG_NOW, ARG_JSON),
    ),
)


def get_bistro_cli_commands() -> list[GroupCommand]:
    return [
        GroupCommand(
            name="bistro",
            help="Inspect Bistro configs, node graphs and admission plans",
            subcommands=COMMANDS,
        )
    ]

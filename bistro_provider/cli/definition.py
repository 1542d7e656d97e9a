"""The `airflow bistro` command group, registered through the provider's `cli` key.

Commands are imported lazily so that `airflow --help` stays fast.
"""

from __future__ import annotations

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

from bistro_provider.cli.simulate_command import SIMULATE_COMMAND

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
    SIMULATE_COMMAND,
)


STATE = "bistro_provider.cli.state_commands."
EXIT_CODES = "Exit status: 0 success, 1 error (message on stderr), 2 bad arguments."
ARG_STATE_JSON = Arg(
    ("--json",), help="Print the REST API's JSON instead of text", action="store_true"
)
ARG_LEVEL = Arg(("--level",), help="Show only nodes of this level")
ARG_QUERY = Arg(("--query",), help="Show only nodes whose name contains this text (any case)")
ARG_TAG = Arg(("--tag",), help="Show only nodes with this tag")
ARG_FILL = Arg(
    ("--state",),
    help="Show only nodes in this fill state: free (nothing used), busy, full (a resource "
    "has nothing left) or over (used beyond a lowered limit)",
    choices=("free", "busy", "full", "over"),
)
ARG_JOB = Arg(("job",), help="Job name, as in bistro_job->NAME")
ARG_NODE = Arg(("node",), help="Node name on the job's task level")
ARG_TI_ID = Arg(("--ti-id",), help="Task instance id (UUID), as 'airflow bistro running' shows")
ARG_KILL_JOB = Arg(("--job",), help="Job of the task to kill (with --node)")
ARG_KILL_NODE = Arg(("--node",), help="Node of the task to kill (with --job)")
ARG_CAP_LEVEL = Arg(("level",), help="Level of the node, for example host")
ARG_CAP_NODE = Arg(("node",), help="Node name")
ARG_RESOURCE = Arg(("resource",), help="Resource name declared on the level")
ARG_AMOUNT = Arg(("amount",), help="The new limit, an integer >= 0", type=int)
ARG_RESOURCE_OPTIONAL = Arg(
    ("resource",), help="Resource to clear; all of the node's overrides when omitted", nargs="?"
)
ARG_IMPORT_CONFIG = Arg(
    ("--config",), help="Bistro config file (JSON, or YAML with the same keys)", required=True
)
ARG_WRITE_DAG_FILE = Arg(
    ("--write-dag-file",),
    help="Write the DAG file to this path, normally in the dags folder "
    "(AIRFLOW__CORE__DAGS_FOLDER); an existing file with other content is left alone and "
    "reported as an error",
)

CAPACITY_COMMANDS = (
    ActionCommand(
        name="set",
        help="Set a live limit for one resource of one node",
        description="The override wins over the level's limit and the node source's value; "
        "the scheduler applies it within AIRFLOW__BISTRO__STATE_SYNC_INTERVAL seconds (2 by "
        "default). Lowering a limit below current usage stops nothing, it only admits nothing "
        f"new until usage drops. Audited as cli:<OS user>. {EXIT_CODES}",
        func=lazy_load_command(STATE + "capacity_set"),
        args=(ARG_CAP_LEVEL, ARG_CAP_NODE, ARG_RESOURCE, ARG_AMOUNT, ARG_STATE_JSON),
    ),
    ActionCommand(
        name="clear",
        help="Remove a node's live limits, so config and node-source limits apply again",
        description=f"Audited as cli:<OS user>. {EXIT_CODES}",
        func=lazy_load_command(STATE + "capacity_clear"),
        args=(ARG_CAP_LEVEL, ARG_CAP_NODE, ARG_RESOURCE_OPTIONAL, ARG_STATE_JSON),
    ),
)

ARG_JOB_FILE = Arg(
    ("--file",),
    help="File with the job's config object (JSON, or YAML for .yaml/.yml), as under "
    "bistro_job->NAME",
    required=True,
)
ARG_EXPECTED_VERSION = Arg(
    ("--expected-version",),
    help="The job's version_id when you read it ('airflow bistro jobs --json' shows it); "
    "0 for a new job. A different current version fails the command",
    type=int,
    required=True,
)
JOB_EDIT_NOTE = (
    "Writes to [bistro] config_source: the config file (atomically, keeping the other keys) "
    "or the Airflow Variable; a plugin source is read-only. The executor applies the change "
    "at its next config check. Audited as cli:<OS user>."
)

JOB_COMMANDS = (
    ActionCommand(
        name="save",
        help="Create or replace a job in the config; its version_id goes up by one",
        description=f"{JOB_EDIT_NOTE} {EXIT_CODES} A stale --expected-version is an error "
        "that names both versions.",
        func=lazy_load_command(STATE + "job_save"),
        args=(ARG_JOB, ARG_JOB_FILE, ARG_EXPECTED_VERSION, ARG_STATE_JSON),
    ),
    ActionCommand(
        name="delete",
        help="Delete a job from the config if it is still at the expected version",
        description=f"{JOB_EDIT_NOTE} Its running tasks become orphans. {EXIT_CODES}",
        func=lazy_load_command(STATE + "job_delete"),
        args=(ARG_JOB, ARG_EXPECTED_VERSION, ARG_STATE_JSON),
    ),
)

STATE_COMMANDS = (
    ActionCommand(
        name="forest",
        help="Show every node with its capacity, usage, overrides and fill state",
        description="Reads what the scheduler's BistroExecutor published in the metadata "
        f"database; --json prints the same document as GET /bistro/api/v1/forest. {EXIT_CODES}",
        func=lazy_load_command(STATE + "forest"),
        args=(ARG_LEVEL, ARG_QUERY, ARG_TAG, ARG_FILL, ARG_STATE_JSON),
    ),
    ActionCommand(
        name="jobs",
        help="Show every job with its task counts per status",
        description=f"--json prints the same document as GET /bistro/api/v1/jobs. {EXIT_CODES}",
        func=lazy_load_command(STATE + "jobs"),
        args=(ARG_STATE_JSON,),
    ),
    ActionCommand(
        name="running",
        help="Show admitted tasks and what they hold",
        description=f"--json prints the same document as GET /bistro/api/v1/running. {EXIT_CODES}",
        func=lazy_load_command(STATE + "running"),
        args=(ARG_STATE_JSON,),
    ),
    ActionCommand(
        name="waiting",
        help="Show queued tasks that wait for resources, with the reason each waits",
        description=f"--json prints the same document as GET /bistro/api/v1/waiting. {EXIT_CODES}",
        func=lazy_load_command(STATE + "waiting"),
        args=(ARG_STATE_JSON,),
    ),
    ActionCommand(
        name="explain",
        help="Explain why a job's task on a node is running, waiting, done or not runnable",
        description=f"{EXIT_CODES} An unknown job or node is explained, not an error.",
        func=lazy_load_command(STATE + "explain"),
        args=(ARG_JOB, ARG_NODE, ARG_STATE_JSON),
    ),
    ActionCommand(
        name="kill",
        help="Mark a running task instance failed; Airflow then stops its process",
        description="Give --ti-id, or --job and --node. The job's status on the node becomes "
        f"failed until 'airflow bistro forgive'. Audited as cli:<OS user>. {EXIT_CODES}",
        func=lazy_load_command(STATE + "kill"),
        args=(ARG_TI_ID, ARG_KILL_JOB, ARG_KILL_NODE, ARG_STATE_JSON),
    ),
    ActionCommand(
        name="forgive",
        help="Let a job's failed tasks run again and restart its backoffs",
        description="Failed statuses become retryable at once (stored, so this survives "
        "scheduler restarts) and failed task instances of the job's DAG are cleared. "
        f"Audited as cli:<OS user>. {EXIT_CODES}",
        func=lazy_load_command(STATE + "forgive"),
        args=(ARG_JOB, ARG_STATE_JSON),
    ),
    GroupCommand(
        name="capacity",
        help="Set or clear live per-node limits",
        subcommands=CAPACITY_COMMANDS,
    ),
    GroupCommand(
        name="job",
        help="Save or delete a job in the config, checked by its version",
        subcommands=JOB_COMMANDS,
    ),
    ActionCommand(
        name="import-config",
        help="Check a Bistro config and print the airflow.cfg lines and DAG file that run it",
        description="Checks the config as validate does. Exit status: 0 valid (and the DAG "
        "file written when asked), 1 errors in the config or the DAG file cannot be written, "
        "2 bad arguments.",
        func=lazy_load_command(STATE + "import_config"),
        args=(ARG_IMPORT_CONFIG, ARG_WRITE_DAG_FILE, ARG_STATE_JSON),
    ),
)


def get_bistro_cli_commands() -> list[GroupCommand]:
    return [
        GroupCommand(
            name="bistro",
            help="Inspect Bistro configs, node usage, jobs and tasks; change live capacity",
            subcommands=COMMANDS + STATE_COMMANDS,
        )
    ]

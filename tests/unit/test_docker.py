"""Static rules for the deployment in docker/: compose.yaml, the Dockerfile and bistro.json.

Nothing here builds or starts a container. compose.yaml is read with PyYAML, whose
safe_load resolves ``<<: *anchor`` merge keys as Compose does, so every rule sees a service
with its merged keys. Variables such as ``${POSTGRES_PASSWORD:?...}`` stay uninterpolated.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from bistro_provider.core.config import load_config
from bistro_provider.core.model import Config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
AIRFLOW_IMAGE = "apache/airflow:3.3.2-python3.11"
# The official image's WORKDIR and default user.
BASE_WORKDIR = "/opt/airflow"
BASE_USER = "airflow"
INSTALL_EXTRAS = ("postgres", "celery")

SCHEDULERS = ("scheduler-1", "scheduler-2")
WORKERS = ("worker-a", "worker-b")
AIRFLOW_SERVICES = (
    "airflow-init",
    "api-server",
    *SCHEDULERS,
    "dag-processor",
    "triggerer",
    *WORKERS,
)
ALL_SERVICES = ("postgres", "redis", *AIRFLOW_SERVICES)
ONE_SHOT_SERVICES = ("airflow-init",)

# Commands the Airflow services may run. The single words are top-level commands of
# `airflow --help` in apache-airflow 3.3.2, `db migrate` is listed by `airflow db --help`,
# and `celery worker` is defined by apache-airflow-providers-celery.
KNOWN_COMMANDS = (
    "api-server",
    "scheduler",
    "dag-processor",
    "triggerer",
    "db migrate",
    "celery worker",
)
EXPECTED_COMMANDS = {
    "airflow-init": "db migrate",
    "api-server": "api-server",
    "scheduler-1": "scheduler",
    "scheduler-2": "scheduler",
    "dag-processor": "dag-processor",
    "triggerer": "triggerer",
    "worker-a": "celery worker",
    "worker-b": "celery worker",
}

EXECUTOR = "bistro_provider.executors.celery_executor.BistroCeleryExecutor"
CONFIG_PATH = "/opt/airflow/bistro/bistro.json"
COMMON_ENVIRONMENT = {
    "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CELERY__BROKER_URL": "redis://redis:6379/0",
    "AIRFLOW__BISTRO__CONFIG_FILE": CONFIG_PATH,
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://api-server:8080/execution/",
}
URL_PREFIXES = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:",
    "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql+psycopg2://airflow:",
}
SECRET_SETTINGS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
)
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)([^}]*)\}")
HELP_COMMAND = re.compile(r"^ {4,}([a-z][a-z0-9-]*)(?: {2,}|$)", re.MULTILINE)


# --- loading --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def airflow_help(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Return the command and group names that `airflow --help` lists, from one run."""
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow_home"))}
    result = subprocess.run(
        [str(airflow), "--help"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return set(HELP_COMMAND.findall(result.stdout))


@pytest.fixture(scope="module")
def bistro_config() -> Config:
    return load_config(DOCKER / "bistro.json")


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def subcommand_of(argv: list[str]) -> str:
    """Return the words after `airflow` up to the first option, e.g. "celery worker"."""
    words: list[str] = []
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    return " ".join(words)


def option_value(argv: list[str], option: str) -> str | None:
    """Return the value given to `option` as ``--opt value`` or ``--opt=value``."""
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(f"{option}="):
            return word.split("=", 1)[1]
    return None


def worker_cpu(config: Config, hostname: str) -> int:
    overrides = config.settings.worker_resources_override.get(hostname, {})
    return overrides.get("cpu", config.settings.resources["worker"]["cpu"].limit)


# --- services and commands ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_compose_defines_service(services: dict[str, Any], name: str) -> None:
    assert name in services


def test_compose_has_no_unexpected_services(services: dict[str, Any]) -> None:
    assert sorted(services) == sorted(ALL_SERVICES)


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_runs_airflow_cli(services: dict[str, Any], name: str) -> None:
    assert command_of(services[name])[0] == "airflow"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_runs_known_command(services: dict[str, Any], name: str) -> None:
    subcommand = subcommand_of(command_of(services[name]))
    assert subcommand in KNOWN_COMMANDS
    assert subcommand == EXPECTED_COMMANDS[name]


@pytest.mark.parametrize("word", sorted({command.split()[0] for command in KNOWN_COMMANDS}))
def test_known_command_is_in_airflow_help(airflow_help: set[str], word: str) -> None:
    if word == "celery" and importlib.util.find_spec("airflow.providers.celery") is None:
        pytest.skip(
            "`airflow celery` exists only with apache-airflow-providers-celery, which this "
            "environment lacks; the image installs it through the celery extra"
        )
    assert word in airflow_help


def services_running(services: dict[str, Any], subcommand: str) -> list[str]:
    return sorted(n for n, s in services.items() if subcommand_of(command_of(s)) == subcommand)


def test_two_schedulers_run(services: dict[str, Any]) -> None:
    assert services_running(services, "scheduler") == sorted(SCHEDULERS)


def test_two_celery_workers_run(services: dict[str, Any]) -> None:
    assert services_running(services, "celery worker") == sorted(WORKERS)


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_published_ports_bind_loopback(services: dict[str, Any], name: str) -> None:
    for port in services[name].get("ports", []):
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{name} publishes {port!r} beyond loopback"


def test_api_server_publishes_8080(services: dict[str, Any]) -> None:
    assert services["api-server"]["ports"] == ["127.0.0.1:8080:8080"]


def test_executor_class_is_importable(services: dict[str, Any]) -> None:
    path = services["scheduler-1"]["environment"]["AIRFLOW__CORE__EXECUTOR"]
    module_name, _, class_name = path.rpartition(".")
    module_file = ROOT / f"{module_name.replace('.', '/')}.py"
    if not module_file.exists():
        pytest.skip(f"{module_file.relative_to(ROOT)} does not exist yet, so {path} is unchecked")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "celery" and "providers.celery" not in str(exc.name):
            raise
        pytest.skip(f"{module_name} needs {exc.name}, which this environment lacks")
    from airflow.executors.base_executor import BaseExecutor

    executor_class = getattr(module, class_name, None)
    assert isinstance(executor_class, type), f"{module_name} has no class {class_name}"
    assert issubclass(executor_class, BaseExecutor)


# --- environment and mounts -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), sorted(COMMON_ENVIRONMENT.items()))
def test_airflow_services_share_setting(services: dict[str, Any], key: str, value: str) -> None:
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"].get(key) == value, f"{name}: {key}"


@pytest.mark.parametrize(("key", "prefix"), sorted(URL_PREFIXES.items()))
def test_airflow_services_use_postgres(services: dict[str, Any], key: str, prefix: str) -> None:
    for name in AIRFLOW_SERVICES:
        url = str(services[name]["environment"].get(key))
        assert url.startswith(prefix), f"{name}: {key} = {url}"
        assert url.endswith("@postgres/airflow"), f"{name}: {key} = {url}"


def test_execution_api_url_reaches_api_server(services: dict[str, Any]) -> None:
    url = urlsplit(COMMON_ENVIRONMENT["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    container_ports = [str(port).rsplit(":", 1)[1] for port in services["api-server"]["ports"]]
    assert url.hostname == "api-server"
    assert str(url.port) in container_ports


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_bistro_config_is_mounted(services: dict[str, Any], name: str) -> None:
    assert f"./bistro.json:{CONFIG_PATH}:ro" in services[name]["volumes"]


# --- health checks, dependencies, restarts --------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_service_has_restart_policy(services: dict[str, Any], name: str) -> None:
    assert "restart" in services[name]


@pytest.mark.parametrize("name", [n for n in ALL_SERVICES if n not in ONE_SHOT_SERVICES])
def test_long_running_service_restarts(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] in ("always", "unless-stopped")


def test_migration_runs_once(services: dict[str, Any]) -> None:
    assert services["airflow-init"]["restart"] == "no"


@pytest.mark.parametrize("name", [n for n in ALL_SERVICES if n not in ONE_SHOT_SERVICES])
def test_long_running_service_has_healthcheck(services: dict[str, Any], name: str) -> None:
    assert services[name]["healthcheck"]["test"]


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_waits_for_postgres(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", [n for n in AIRFLOW_SERVICES if n not in ONE_SHOT_SERVICES])
def test_airflow_service_waits_for_migration(services: dict[str, Any], name: str) -> None:
    condition = services[name]["depends_on"]["airflow-init"]["condition"]
    assert condition == "service_completed_successfully"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_waits_for_api_server(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["api-server"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", WORKERS)
def test_worker_healthcheck_pings_own_node(services: dict[str, Any], name: str) -> None:
    test = services[name]["healthcheck"]["test"]
    assert option_value(test, "--destination") == f"celery@{services[name]['hostname']}"


def test_postgres_keeps_data_in_named_volume(compose: dict[str, Any]) -> None:
    volume = compose["services"]["postgres"]["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_postgres_healthcheck_uses_pg_isready(services: dict[str, Any]) -> None:
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


# --- workers and the Bistro config ----------------------------------------------------------------


def test_example_config_loads_cleanly(bistro_config: Config) -> None:
    assert bistro_config.warnings == ()
    assert bistro_config.settings.enabled is True
    for name, job in bistro_config.jobs.items():
        assert job.errors == (), name


def test_example_config_declares_worker_cpu(bistro_config: Config) -> None:
    assert "cpu" in bistro_config.settings.resources["worker"]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_hostname_has_override(
    services: dict[str, Any], bistro_config: Config, name: str
) -> None:
    hostname = services[name]["hostname"]
    assert "cpu" in bistro_config.settings.worker_resources_override.get(hostname, {})


def test_workers_differ_in_cpu(services: dict[str, Any], bistro_config: Config) -> None:
    amounts = {worker_cpu(bistro_config, services[name]["hostname"]) for name in WORKERS}
    assert len(amounts) == len(WORKERS)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_concurrency_matches_cpu(
    services: dict[str, Any], bistro_config: Config, name: str
) -> None:
    # A worker is given the most tasks at once when every task takes the default cpu amount.
    default_cpu = bistro_config.settings.resources["worker"]["cpu"].default
    max_tasks = worker_cpu(bistro_config, services[name]["hostname"]) // default_cpu
    assert option_value(command_of(services[name]), "--concurrency") == str(max_tasks)


@pytest.mark.parametrize("name", WORKERS)
def test_worker_serves_queue_named_after_it(services: dict[str, Any], name: str) -> None:
    queues = (option_value(command_of(services[name]), "--queues") or "").split(",")
    assert services[name]["hostname"] in queues


# --- Dockerfile -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with the WORKDIR and USER in effect when it runs."""

    keyword: str
    arguments: str
    workdir: str
    user: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Parse instructions, dropping comment lines and joining backslash continuations."""
    uncommented = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    joined = re.sub(r"\\\n", " ", uncommented)
    instructions: list[Instruction] = []
    workdir, user = BASE_WORKDIR, BASE_USER
    for line in filter(str.strip, joined.splitlines()):
        keyword, _, arguments = line.strip().partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir, arguments))
        elif keyword == "USER":
            user = arguments
        instructions.append(Instruction(keyword, arguments, workdir, user))
    return instructions


def copy_targets(instruction: Instruction) -> dict[str, str]:
    """Map each source of a COPY to the absolute path it lands on."""
    words = [word for word in shlex.split(instruction.arguments) if not word.startswith("--")]
    *sources, destination = words
    into_directory = destination.endswith("/") or len(sources) > 1 or destination == "."
    base = PurePosixPath(instruction.workdir, destination)
    return {
        source: str(base / PurePosixPath(source).name if into_directory else base)
        for source in sources
    }


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def copied(dockerfile: list[Instruction]) -> dict[str, str]:
    targets: dict[str, str] = {}
    for instruction in dockerfile:
        if instruction.keyword == "COPY":
            targets.update(copy_targets(instruction))
    return targets


@pytest.fixture(scope="module")
def pip_install(dockerfile: list[Instruction]) -> Instruction:
    runs = [i for i in dockerfile if i.keyword == "RUN" and "pip install" in i.arguments]
    assert len(runs) == 1
    return runs[0]


def test_dockerfile_starts_from_official_image(dockerfile: list[Instruction]) -> None:
    assert dockerfile[0].keyword == "FROM"
    assert dockerfile[0].arguments == AIRFLOW_IMAGE


def test_image_airflow_meets_project_requirement() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    airflow = next(r for r in requirements if r.name == "apache-airflow")
    image_version = Version(AIRFLOW_IMAGE.split(":")[1].split("-")[0])
    assert airflow.specifier.contains(image_version)


@pytest.mark.parametrize("source", ["pyproject.toml", "README.md", "bistro_provider"])
def test_dockerfile_copies_project_file(
    copied: dict[str, str], pip_install: Instruction, source: str
) -> None:
    assert copied.get(source) == str(PurePosixPath(pip_install.workdir, source))


def test_dockerfile_copies_dags_into_dags_folder(copied: dict[str, str]) -> None:
    assert copied.get("dags") == "/opt/airflow/dags"


def test_dockerfile_installs_project_with_extras(pip_install: Instruction) -> None:
    words = shlex.split(pip_install.arguments)
    assert f".[{','.join(INSTALL_EXTRAS)}]" in words
    assert "--no-cache-dir" in words


def test_pip_install_runs_as_airflow(pip_install: Instruction) -> None:
    assert pip_install.user == "airflow"


def test_pip_install_keeps_image_airflow(pip_install: Instruction) -> None:
    assert "apache-airflow==${AIRFLOW_VERSION}" in shlex.split(pip_install.arguments)


@pytest.mark.parametrize("extra", INSTALL_EXTRAS)
def test_install_extra_exists(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert extra in project["optional-dependencies"]


def test_dockerignore_keeps_copied_sources(copied: dict[str, str]) -> None:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    for source in copied:
        assert f"!{source}" in lines or f"!{source}/" in lines, source


# --- secrets --------------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose_variables() -> dict[str, set[str]]:
    """Map each ``${NAME...}`` variable of compose.yaml to the modifiers it is used with."""
    found: dict[str, set[str]] = {}
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    for name, modifier in COMPOSE_VARIABLE.findall(text):
        found.setdefault(name, set()).add(modifier)
    return found


def test_env_example_holds_no_values() -> None:
    filled = {name: value for name, value in env_example().items() if value}
    assert filled == {}


def test_env_example_lists_every_compose_variable() -> None:
    assert sorted(env_example()) == sorted(compose_variables())


@pytest.mark.parametrize("name", sorted(compose_variables()))
def test_compose_variable_is_required(name: str) -> None:
    # ":?" makes Compose stop with a message when the variable is unset or empty.
    modifiers = compose_variables()[name]
    assert all(modifier.startswith(":?") for modifier in modifiers), modifiers


@pytest.mark.parametrize("key", SECRET_SETTINGS)
def test_secret_setting_comes_from_env(services: dict[str, Any], key: str) -> None:
    for name in AIRFLOW_SERVICES:
        value = str(services[name]["environment"].get(key))
        assert COMPOSE_VARIABLE.fullmatch(value), f"{name}: {key} must be a ${{...}} variable"


@pytest.mark.parametrize("key", sorted(URL_PREFIXES))
def test_database_password_comes_from_env(services: dict[str, Any], key: str) -> None:
    url = services["api-server"]["environment"][key]
    assert "${POSTGRES_PASSWORD" in url


def test_postgres_password_comes_from_env(services: dict[str, Any]) -> None:
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD")


def test_env_file_is_git_ignored() -> None:
    lines = (DOCKER / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in lines

"""Rules for a job's optional ``airflow`` object: continuous mode, poll interval, task timeout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bistro_provider.core.config import config_to_json, parse_config
from bistro_provider.core.errors import ConfigIssue
from bistro_provider.core.model import Job

SETTINGS: dict[str, Any] = {
    "enabled": True,
    "nodes": {
        "levels": ["host"],
        "node_sources": [{"source": "manual", "prefs": {"host1": []}}],
    },
    "resources": {},
}


def parse_job(job: dict[str, Any]) -> Job:
    return parse_config({"bistro_settings": SETTINGS, "bistro_job->j": job}).jobs["j"]


def job_with_airflow(airflow: Any) -> Job:
    return parse_job({"owner": "o", "airflow": airflow})


def test_job_defaults_to_not_continuous() -> None:
    job = parse_job({"owner": "o"})
    assert job.continuous is False
    assert job.poll_interval == 60.0
    assert job.errors == ()


def test_airflow_object_sets_continuous_and_interval() -> None:
    job = job_with_airflow({"continuous": True, "poll_interval": 15})
    assert job.continuous is True
    assert job.poll_interval == 15.0
    assert job.errors == ()


def test_task_timeout_defaults_to_none() -> None:
    job = parse_job({"owner": "o"})
    assert job.task_timeout_sec is None


def test_airflow_object_sets_task_timeout() -> None:
    job = job_with_airflow({"task_timeout_sec": 90})
    assert job.task_timeout_sec == 90.0
    assert job.errors == ()


def test_task_timeout_survives_export() -> None:
    job = {"owner": "o", "airflow": {"task_timeout_sec": 7.5}}
    exported = config_to_json(parse_config({"bistro_settings": SETTINGS, "bistro_job->j": job}))
    reparsed = parse_config(json.loads(json.dumps(exported))).jobs["j"]
    assert exported["bistro_job->j"]["airflow"] == {"task_timeout_sec": 7.5}
    assert reparsed.task_timeout_sec == 7.5


def test_airflow_object_may_be_empty() -> None:
    job = job_with_airflow({})
    assert job.continuous is False
    assert job.errors == ()


def test_airflow_key_is_not_an_unknown_job_key() -> None:
    config = parse_config(
        {"bistro_settings": SETTINGS, "bistro_job->j": {"owner": "o", "airflow": {}}}
    )
    assert [issue for issue in config.warnings if issue.path.endswith(".airflow")] == []


@pytest.mark.parametrize(
    ("airflow", "path", "fragment"),
    [
        pytest.param(
            ["continuous"], "bistro_job->j.airflow", "must be an object", id="not-an-object"
        ),
        pytest.param(
            {"continuous": "yes"},
            "bistro_job->j.airflow.continuous",
            "must be true or false",
            id="continuous-string",
        ),
        pytest.param(
            {"continuous": 1},
            "bistro_job->j.airflow.continuous",
            "must be true or false",
            id="continuous-integer",
        ),
        pytest.param(
            {"poll_interval": "60"},
            "bistro_job->j.airflow.poll_interval",
            "must be a number of seconds",
            id="interval-string",
        ),
        pytest.param(
            {"poll_interval": True},
            "bistro_job->j.airflow.poll_interval",
            "must be a number of seconds",
            id="interval-boolean",
        ),
        pytest.param(
            {"poll_interval": 0},
            "bistro_job->j.airflow.poll_interval",
            "must be a positive number of seconds",
            id="interval-zero",
        ),
        pytest.param(
            {"poll_interval": -5},
            "bistro_job->j.airflow.poll_interval",
            "must be a positive number of seconds",
            id="interval-negative",
        ),
        pytest.param(
            {"task_timeout_sec": 0},
            "bistro_job->j.airflow.task_timeout_sec",
            "must be a positive number of seconds",
            id="timeout-zero",
        ),
        pytest.param(
            {"task_timeout_sec": "30"},
            "bistro_job->j.airflow.task_timeout_sec",
            "a number of seconds",
            id="timeout-string",
        ),
        pytest.param(
            {"continous": True},
            "bistro_job->j.airflow.continous",
            "unknown key; allowed keys: continuous, poll_interval, task_timeout_sec",
            id="misspelled-key",
        ),
    ],
)
def test_invalid_airflow_value_is_job_error(airflow: Any, path: str, fragment: str) -> None:
    job = job_with_airflow(airflow)
    paths = [issue.path for issue in job.errors]
    messages = " ".join(issue.message for issue in job.errors)
    assert paths == [path]
    assert fragment in messages
    assert job.can_run is False


def test_invalid_airflow_value_keeps_default() -> None:
    job = job_with_airflow({"continuous": "yes", "poll_interval": 30})
    assert job.continuous is False
    assert job.poll_interval == 30.0


def test_unknown_airflow_key_names_value_path() -> None:
    job = job_with_airflow({"continuous": True, "schedule": "@daily"})
    expected = ConfigIssue(
        "bistro_job->j.airflow.schedule", "unknown key; allowed keys: continuous, poll_interval, task_timeout_sec"
    )
    assert job.errors == (expected,)


def test_airflow_error_leaves_other_jobs_runnable() -> None:
    config = parse_config(
        {
            "bistro_settings": SETTINGS,
            "bistro_job->bad": {"owner": "o", "airflow": {"continuous": "yes"}},
            "bistro_job->good": {"owner": "o"},
        }
    )
    assert config.jobs["bad"].can_run is False
    assert config.jobs["good"].can_run is True


def test_airflow_object_survives_export() -> None:
    job = {"owner": "o", "airflow": {"continuous": True, "poll_interval": 2.5}}
    exported = config_to_json(parse_config({"bistro_settings": SETTINGS, "bistro_job->j": job}))
    reparsed = parse_config(json.loads(json.dumps(exported))).jobs["j"]
    assert exported["bistro_job->j"]["airflow"] == {"continuous": True, "poll_interval": 2.5}
    assert reparsed.continuous is True
    assert reparsed.poll_interval == 2.5


def test_default_airflow_object_is_not_exported() -> None:
    exported = config_to_json(
        parse_config({"bistro_settings": SETTINGS, "bistro_job->j": {"owner": "o"}})
    )
    assert "airflow" not in exported["bistro_job->j"]

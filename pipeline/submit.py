"""Send a run to a Ray cluster through the Jobs API, and optionally follow it.

The job's entrypoint is `python jobs/transcribe.py <the same arguments as run>`; its
`runtime_env` carries the project folder (`working_dir`) and bulkscribe's
requirements (`pip`), so the cluster needs only Ray and the model data packages.
Inside the job $RAY_ADDRESS is set, so the run joins the cluster it was sent to.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "jobs/transcribe.py"
# Large or local-only folders that a job never needs.
EXCLUDES = [".venv", ".git", "tests/data", "bench/_work", "out", "__pycache__", "*.egg-info", ".pytest_cache"]


class SubmitError(RuntimeError):
    """The cluster cannot be reached, or refused the job."""


def _client(address: str):
    # Ray 2.60 clusters require the token that `ray start` wrote under ~/.ray (or
    # $RAY_AUTH_TOKEN); Ray reads the mode when it is imported, so set it first.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, AuthenticationError, ...: all mean "cannot submit"
        raise SubmitError(f"cannot reach the Ray cluster at {address}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str

    def follow_commands(self) -> list[str]:
        a = shlex.quote(self.address)
        return [
            f"ray job logs --address {a} --follow {self.job_id}",
            f"ray job status --address {a} {self.job_id}",
            f"ray job stop --address {a} {self.job_id}",
        ]


def requirements(storage_urls: list[str]) -> list[str]:
    """bulkscribe's own requirements, plus s3fs/gcsfs where a URL needs them.

    Ray is left out: the cluster runs its own, and a second copy in the job's
    environment would not match it.
    """
    found = []
    extras = {"s3"} if any(u.startswith(("s3://", "s3a://")) for u in storage_urls) else set()
    extras |= {"gcs"} if any(u.startswith(("gs://", "gcs://")) for u in storage_urls) else set()
    for req in importlib.metadata.requires("bulkscribe") or []:
        name, _, marker = req.partition(";")
        if "extra ==" in marker and not any(f"extra == \"{e}\"" in marker for e in extras):
            continue
        if name.strip().lower().startswith("ray"):
            continue
        found.append(name.strip())
    return found


def entrypoint(run_args: list[str]) -> str:
    """The shell command Ray runs: every argument quoted, whatever characters it holds."""
    return " ".join(["python", ENTRYPOINT, *(shlex.quote(a) for a in run_args)])


def submit(address: str, run_args: list[str], storage_urls: list[str], *, pip: bool = True) -> Submission:
    """Submit `bulkscribe run <run_args>` to the cluster whose dashboard is at `address`."""
    if not (PROJECT_ROOT / ENTRYPOINT).is_file():
        raise FileNotFoundError(
            f"{PROJECT_ROOT / ENTRYPOINT} is missing: submit from a checkout of bulkscribe (pip install -e .)"
        )
    client = _client(address)
    runtime_env: dict = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
    if pip:
        runtime_env["pip"] = requirements(storage_urls)
    job_id = client.submit_job(entrypoint=entrypoint(run_args), runtime_env=runtime_env)
    return Submission(job_id, address)


def follow(submission: Submission) -> str:
    """Print the job's logs as they come; return its final status (SUCCEEDED, FAILED, STOPPED)."""
    client = _client(submission.address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission.job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return str(client.get_job_status(submission.job_id).value)

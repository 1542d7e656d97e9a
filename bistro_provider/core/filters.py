"""Job filters: which nodes a job may run tasks on.

A job may have one `LevelFilter` per level. A task on node N is eligible only if every node
on N's path to the root is enabled and passes the job's filter for that node's level. So a
filter that rejects a host also excludes every database under it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job, LevelFilter

Eligibility = Literal["yes", "disabled", "avoided"]

HASH_RANGE = 2**64
# The personalization string keeps these hashes apart from other blake2b hashes of the same bytes.
_HASH_PERSON = b"bistro-fraction"


def stable_fraction_hash(job_name: str, node_name: str) -> int:
    """Return a 64-bit hash of the pair that is the same in every process, host and release.

    The job name salts the hash, so each job picks its own subset for `fraction_of_nodes`.
    Its UTF-8 length goes first, so ("ab", "c") and ("a", "bc") hash different inputs.
    """
    job_bytes = job_name.encode("utf-8")
    digest = hashlib.blake2b(digest_size=8, person=_HASH_PERSON)
    digest.update(len(job_bytes).to_bytes(8, "big"))
    digest.update(job_bytes)
    digest.update(node_name.encode("utf-8"))
    return int.from_bytes(digest.digest(), "big")


def _fraction_accepts(fraction: float, job_name: str, node_name: str) -> bool:
    # Bistro treats a fraction of 0 or less as 1.0, that is, as no filter.
    if fraction >= 1.0 or fraction <= 0.0:
        return True
    return stable_fraction_hash(job_name, node_name) < fraction * HASH_RANGE


def level_filter_accepts(flt: LevelFilter, node: Node, job_name: str) -> bool:
    """Return True when `node` passes every non-empty rule of `flt` for job `job_name`.

    Regexes match anywhere in the name (`re.search`), and `tag_whitelist` needs just one
    of the node's tags. For one job, the nodes kept by a smaller `fraction_of_nodes` are a
    subset of those kept by a larger one, because both compare the same hash.
    """
    name = node.name
    if flt.whitelist and name not in flt.whitelist:
        return False
    if flt.whitelist_regex is not None and flt.whitelist_regex.search(name) is None:
        return False
    if name in flt.blacklist:
        return False
    if flt.blacklist_regex is not None and flt.blacklist_regex.search(name) is not None:
        return False
    if flt.tag_whitelist and not flt.tag_whitelist & node.tags:
        return False
    return _fraction_accepts(flt.fraction_of_nodes, job_name, name)


def task_eligibility(job: Job, node: Node, levels: tuple[str, ...]) -> Eligibility:
    """Return whether `job` may run a task on `node`: "yes", "disabled" or "avoided".

    The walk goes from the task node up to the instance node and, like Bistro, checks each
    node in turn: a disabled node gives "disabled", then a rejecting filter for the node's
    level gives "avoided". So the node nearest the task decides when two nodes fail.
    """
    for step in node.path_to_root():
        if not step.enabled:
            return "disabled"
        flt = job.filters.get(levels[step.level])
        if flt is not None and not level_filter_accepts(flt, step, job.name):
            return "avoided"
    return "yes"


class PathEligibility:
    """`task_eligibility(job, node, levels) == "yes"` for many nodes of one job.

    Each ancestor's result is computed once and kept, so checking a million databases under
    ten thousand hosts evaluates each host's filter and enabled flag once. The results are
    only valid while no node is enabled, disabled or added, so create one per pass.
    """

    def __init__(self, job: Job, levels: tuple[str, ...], *, check_enabled: bool = True):
        self.job = job
        self.levels = levels
        self.check_enabled = check_enabled
        """False checks the filters only, for callers that track disabled nodes apart."""
        self._ancestors: dict[int, bool] = {}

    def eligible(self, node: Node) -> bool:
        """Return True when `node` and every ancestor are enabled and pass the job's filters."""
        if not self._node_passes(node):
            return False
        parent = node.parent
        if parent is None:
            return True
        # Nodes stay alive in their forest for the whole pass, so their ids are stable keys.
        known = self._ancestors.get(id(parent))
        if known is None:
            known = self._ancestors[id(parent)] = self.eligible(parent)
        return known

    def _node_passes(self, node: Node) -> bool:
        if self.check_enabled and not node.enabled:
            return False
        flt = self.job.filters.get(self.levels[node.level])
        return flt is None or level_filter_accepts(flt, node, self.job.name)

from tests.unit.test_executor import *
def test_dbg(executor_env, patch_snapshot):
    path = write_config(Path(executor_env["path"]), db_limit=2)
    executor = make_executor(path)
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [first] = workloads_for(names, ["db11"])
    queue_all(executor, [first])
    executor.trigger_tasks(open_slots=8)
    again = first.model_copy(update={"token": "t2"})
    queue_all(executor, [again])
    print(executor.queued_tasks.keys(), executor.admission.waiting, executor.admission._dirty)
    executor.trigger_tasks(open_slots=8)
    print(executor.admission.waiting_reasons(), executor.admission.ledger.usage())
    assert 0

"""Submits or schedules a compiled PipelineSpec on a Kubeflow Pipelines 2.x API server with the kfp client."""

from __future__ import annotations

from typing import Optional


def _client(host: str, namespace: Optional[str] = None, token: Optional[str] = None):
    import kfp

    return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


def run_root(package: str, pipeline_root: Optional[str]) -> Optional[str]:
    """The run's pipeline root: the given one, else the one compiled into the spec, else None (the cluster's).

    Open-source KFP's API server reads only the run's runtime config, never the spec's
    defaultPipelineRoot, so a root chosen at compile time must travel with each run.
    """
    if pipeline_root:
        return pipeline_root
    from kubeflow.runner import load_spec

    return load_spec(package).get("defaultPipelineRoot") or None


def check_cron(cron: str) -> str:
    """KFP's scheduler (robfig/cron) wants 6 fields, seconds first; a 5-field crontab line is a mistake."""
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(
            f"cron {cron!r} has {len(fields)} fields; KFP needs 6 (seconds first), "
            "e.g. '0 0 3 * * 0' for Sundays at 03:00"
        )
    return " ".join(fields)


def submit(
    package: str,
    host: str,
    *,
    experiment: str,
    run_name: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    namespace: Optional[str] = None,
    token: Optional[str] = None,
) -> str:
    """One run now; returns its run id. Caching follows the compiled spec (per-task options kept)."""
    client = _client(host, namespace, token)
    result = client.create_run_from_pipeline_package(
        package,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        pipeline_root=run_root(package, pipeline_root),
    )
    return result.run_id


def schedule(
    package: str,
    host: str,
    *,
    cron: str,
    job_name: str,
    experiment: str,
    pipeline_root: Optional[str] = None,
    max_concurrency: int = 1,
    namespace: Optional[str] = None,
    token: Optional[str] = None,
) -> str:
    """A recurring run; returns its id.

    max_concurrency=1: a retraining run must see the model blessed by the previous one. No
    catch-up: after a pause, one run on the latest span replaces the missed ones.
    """
    client = _client(host, namespace, token)
    experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=check_cron(cron),
        max_concurrency=max_concurrency,
        no_catchup=True,
        pipeline_package_path=package,
        pipeline_root=run_root(package, pipeline_root),
    )
    return recurring.recurring_run_id

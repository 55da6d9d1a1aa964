"""What a joblib cluster backend (dask, ray) needs around a build's parallel run."""

from __future__ import annotations

import contextlib

from dhm_data.errors import BackendError


@contextlib.contextmanager
def backend_session(backend: str, scheduler: str | None, jobs: int):
    """What a joblib backend needs around it.

    ``dask``: a ``dask.distributed.Client`` connected to ``scheduler`` (an
    address such as ``tcp://head:8786``) or, without one, a local cluster of
    ``jobs`` single-threaded worker processes.  ``ray``: ``ray.init`` (address
    from ``scheduler`` or ``RAY_ADDRESS``) and joblib's Ray backend registered.
    Other backends (``loky``, ``multiprocessing``, ``threading``) need nothing.
    """
    if backend == "dask":
        try:
            from dask.distributed import Client, LocalCluster  # optional: dask is only needed for --backend dask
        except ImportError as e:
            raise BackendError("--backend dask needs dask.distributed: pip install 'dhm-data[dask]'") from e
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise BackendError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({e})") from e
            with client:
                yield client
        else:
            with LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                yield client
    elif backend == "ray":
        try:
            import ray  # optional: ray is only needed for --backend ray
            from ray.util.joblib import register_ray  # optional: ray is only needed for --backend ray
        except ImportError as e:
            raise BackendError("--backend ray needs ray: pip install 'ray[default]'") from e
        register_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=scheduler)
        try:
            yield None
        finally:
            if started:
                ray.shutdown()
    else:
        yield None

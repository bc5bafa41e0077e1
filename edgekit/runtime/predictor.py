"""An `edgekit.eval` predictor for compiled artifacts: `predictor("build/litepose")`.

Call `register()` once (edgekit.eval's registry has no automatic discovery);
importing this module registers it too.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.runtime.artifact import METADATA


def is_artifact(obj) -> bool:
    return isinstance(obj, (str, Path)) and (Path(obj) / METADATA).is_file()


def artifact_predictor(folder, threads: int | None = None, device=None, tracker=None, key=None, **_):
    from edgekit.eval.predictors import Predictor
    from edgekit.runtime import open_session

    session = open_session(folder, device=device, tracker=tracker, key=key, num_threads=threads)
    art = session.artifact
    return Predictor(session.run, {i["name"]: tuple(i["shape"]) for i in art.inputs},
                     [o["name"] for o in art.outputs], label=f"tvm {Path(folder).name} ({art.meta['target'].get('name', art.arch)})")


def register() -> None:
    from edgekit.eval.predictors import _PREDICTORS, register_predictor

    if not any(e.name == "tvm-artifact" for e in _PREDICTORS):
        register_predictor("tvm-artifact", is_artifact, artifact_predictor, first=True)


register()

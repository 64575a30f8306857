"""study.front_models: what the driver could not do for the front's models is reported, not lost on its thread."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from study.front_measures import Reference
from study.front_models import FrontModels


def test_a_front_that_cannot_be_registered_is_one_of_finish_lines(tmp_path: Path) -> None:
    """The registration runs on the logging thread; its error was never looked at, so a study ended with no
    registered model and no word of it. (A name MLflow refuses stands for any registry failure here.)"""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("front", artifact_location=(tmp_path / "artifacts").as_uri())

    def models(register_model: str) -> FrontModels:
        front_models = FrontModels(
            client,
            experiment_id=experiment_id,
            study_id="s",
            directory=tmp_path / "copies",
            register_model=register_model,
        )
        front_models.reference = Reference(0.2, 1e6)  # set once a checkpoint was read; none is needed here
        front_models.update(set(), set(), {}, set())
        return front_models

    errors = models("a/b").finish()
    assert len(errors) == 1 and errors[0].startswith("registering the front as 'a/b': MlflowException: "), errors
    assert "Names cannot contain '/' or ':'" in errors[0]
    assert models("front").finish() == [] and client.get_registered_model("front").name == "front"

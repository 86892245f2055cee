"""docs/serve.md's in-process server example ("Serving from Python") runs as it stands."""

from doc_pages import doc
from tiny_policy import write_policy


def test_the_readme_in_process_server_example_runs(tmp_path, monkeypatch):
    section = doc("docs/serve.md").split("\n## Serving from Python\n", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    write_policy(
        tmp_path / "policy.onnx", obs_dim=5, obs_layout=(("position", 5),)
    )  # the example's observation holds 5 values
    scope: dict = {}
    exec(compile(example, "docs/serve.md", "exec"), scope)
    assert scope["action"].shape == (2,)
    assert scope["server"].port > 0

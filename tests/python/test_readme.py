"""The Python snippets in README.md's "Connect" section run as written."""
import re
from pathlib import Path

from test_pyarrow_flight import statement_query

README = Path(__file__).resolve().parents[2] / "README.md"


def snippets():
    text = README.read_text()
    # The exact heading: "## Connectors" also starts with "## Connect".
    section = text.split("\n## Connect\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_connect_snippets(uri):
    blocks = snippets()
    assert len(blocks) >= 2
    for code in blocks:
        code = code.replace("grpc://127.0.0.1:50051", uri)
        scope = {"statement_query": statement_query}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
        assert scope["table"].num_rows > 0

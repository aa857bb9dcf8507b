"""A network in a real notebook: executed by nbclient on an ipykernel kernel, as Jupyter runs it.

Front-ends render only the richest of an output's MIME types, HTML before SVG, so the graph must be inside
the HTML output to be seen at all; and ``summary()`` must come back as the table, not as a quoted string.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NET = "network t: input 1x8x8  stem: [conv3-4 bn relu]  conv3-8/2 relu  fc-3"
SVG = "{http://www.w3.org/2000/svg}"


def _run(tmp_path, *cells: str) -> list:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except (RuntimeError, OSError) as e:  # no kernel can start here (jupyter_client finds no usable spec)
        pytest.skip(f"no Jupyter kernel: {e}")
    return [[o for o in cell.outputs if o.output_type == "execute_result"] for cell in nb.cells]


def test_notebook_shows_the_table_and_the_graph_in_one_html_output(tmp_path):
    from cnndsl.report.graphviz import available

    if not available():
        pytest.skip("Graphviz's dot is not installed: the HTML output carries the table and a note instead")
    net_out, summary_out = _run(tmp_path, f"import cnndsl\nnet = cnndsl.loads({NET!r})\nnet",
                                "net.summary()")
    (result,) = net_out
    html = result.data["text/html"]
    assert "image/svg+xml" not in result.data  # one output: the picture is not a second MIME type
    assert "Output Shape" in html
    svg = html[html.index("<svg"):html.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)  # well-formed SVG, inlined without its XML prologue
    assert root.tag == f"{SVG}svg"
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "conv3-8/2" in texts and "fc-3" in texts  # layers drawn under the names the table uses

    (result,) = summary_out
    plain = result.data["text/plain"]
    assert plain.startswith("t: input 1x8x8\n") and "\\n" not in plain and not plain.startswith("'")
    assert "<table>" in result.data["text/html"] and "conv3-8/2" in result.data["text/html"]

"""Write notebooks/explore.ipynb from the cells below (edit here, then run this file).

    python notebooks/make_explore.py            # writes the notebook, unexecuted
    python notebooks/make_explore.py --execute  # and runs it against $BULKSCRIBE_OUTPUT (default ../out)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

CELLS = [
    ("md", """# Exploring a bulkscribe output folder

Hours per language, throughput per node and per file, confidence, failures, and a
transcript. By default this reads `../out`, the folder the README's first command
writes. Set `BULKSCRIBE_OUTPUT` to read another one (a path or an `s3://` URL)."""),
    ("code", """import os

import matplotlib.pyplot as plt

from pipeline import open_output
from pipeline.export import format_timestamp
from pipeline.report import format_summary, summarize

OUT = os.environ.get("BULKSCRIBE_OUTPUT", "../out")
out = open_output(OUT)
print(format_summary(summarize(out.store)))"""),
    ("md", "## Hours transcribed per language"),
    ("code", """per_language = out.sql(\"\"\"
    select coalesce(language, '(' || status || ')') as language, sum(duration_s) / 3600 as hours, count(*) as files
    from files group by 1 order by hours desc
\"\"\").df()
ax = per_language.plot.bar(x="language", y="hours", legend=False, figsize=(7, 3), color="#4477aa")
ax.set_ylabel("audio hours")
ax.set_title("Audio transcribed per language")
plt.tight_layout()
plt.show()
per_language"""),
    ("md", "## Throughput per node and per file\n\n`rtfx` is seconds of audio per second of decoding and transcription."),
    ("code", """per_node = out.sql(\"\"\"
    select node, count(*) as files, sum(duration_s) / 3600 as audio_hours,
           sum(duration_s) / nullif(sum(decode_s + transcribe_s), 0) as rtfx
    from files where status != 'failed' group by node order by node
\"\"\").df()
per_file = out.sql("select uri, duration_s, rtfx from files where rtfx is not null").df()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
left.bar(per_node["node"], per_node["rtfx"], color="#228833")
left.set_ylabel("x real time")
left.set_title("Throughput per node")
left.tick_params(axis="x", rotation=20)
right.scatter(per_file["duration_s"], per_file["rtfx"], s=14, color="#aa3377")
right.set_xlabel("file duration (s)")
right.set_ylabel("x real time")
right.set_title("Throughput per file")
plt.tight_layout()
plt.show()
per_node"""),
    ("md", "## Confidence\n\nWhisper's own signals per segment; the least confident segments are worth a listen."),
    ("code", """conf = out.sql("select avg_logprob, no_speech_prob from segments").df()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
left.hist(conf["avg_logprob"], bins=30, color="#4477aa")
left.set_xlabel("avg_logprob")
left.set_title("Decoder confidence per segment")
right.hist(conf["no_speech_prob"], bins=30, color="#ee6677")
right.set_xlabel("no_speech_prob")
right.set_title("No-speech probability per segment")
plt.tight_layout()
plt.show()
out.sql(\"\"\"
    select uri, round(start, 2) as start, round("end", 2) as "end", round(avg_logprob, 3) as avg_logprob,
           round(no_speech_prob, 3) as no_speech_prob, text
    from segments order by avg_logprob asc limit 10
\"\"\").df()"""),
    ("md", "## Failures by type"),
    ("code", """failures = out.sql(\"\"\"
    select error_type, count(*) as files, any_value(uri) as example, any_value(error_message) as message
    from files where status = 'failed' group by 1 order by files desc
\"\"\").df()
failures if len(failures) else print("no failed files")"""),
    ("md", "## A transcript with timestamps\n\nThe longest transcribed file."),
    ("code", """(uri,) = out.sql("select uri from files where status = 'ok' order by duration_s desc limit 1").fetchall()[0]
rows = out.con.execute('select start, "end", text from segments where uri = ? order by segment', [uri]).fetchall()
print(uri)
for start, end, text in rows:
    print(f"[{format_timestamp(start)} --> {format_timestamp(end)}] {text}")"""),
]


def notebook() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 300) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


if __name__ == "__main__":
    nb = notebook()
    if "--execute" in sys.argv:
        execute(nb)
    nbformat.write(nb, HERE / "explore.ipynb")
    print(f"wrote {HERE / 'explore.ipynb'}")

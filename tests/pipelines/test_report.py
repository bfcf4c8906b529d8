"""The demo report (pipelines/report.py): text from data stays literal Markdown."""

import re

from pipelines.report import truth_table


def test_film_names_from_data_cannot_break_the_report_table():
    """Issue 15.9: a film named with a newline, backticks and pipes is one literal row of the ground-truth table."""
    hostile = "a|b\n`rm -rf`|*x*\r\n| y |.mp4"
    film = {"film": hostile, "cuts": 3, "true_cuts": 3, "shot_f1": 1.0, "scenes": 2, "true_scenes": 2, "scene_ari": 1.0}
    scores = {"films": 1, "shot_f1": 1.0, "shot_precision": 1.0, "shot_recall": 1.0, "tolerance_frames": 1,
              "scene_ari": 1.0, "scenes": 2, "true_scenes": 2, "per_film": [film]}
    lines = "\n".join(truth_table(scores)).splitlines()
    table = lines[lines.index("| film | cuts found / true | shot F1 | scenes curated / true | scene ARI |"):]
    body = [line for line in table[2:] if line.strip()]
    assert len(body) == 1, table                                   # no line break leaked into the table
    assert len(re.split(r"(?<!\\)\|", body[0])) == 7, body[0]      # 5 cells: every pipe from the name is escaped
    assert "`" not in body[0].replace("\\`", "") and "rm -rf" in body[0]

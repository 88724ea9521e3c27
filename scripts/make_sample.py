"""Build the bundled sample (data/sample/) from ../shared/data.

Only the sets that ../shared/data/README.md allows shipping: the commit export (four
repositories), the GitBugs-derived Jira HADOOP and Bugzilla SeaMonkey issues, and the 100
GitBugs microsoft/vscode GitHub issues (CC BY 4.0). No NLBSE'24 rows. Commit author names are
personal data that no feature needs: they are dropped.

Usage: python scripts/make_sample.py [SHARED_DATA_DIR]
"""

import json
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
OUT = Path(__file__).resolve().parents[1] / "data" / "sample"

SELECT = {
    "git_commits.jsonl": lambda r: r["day"] >= "2024-01-01",
    "jira_issues_hadoop.jsonl": lambda r: r["day"] >= "2024-07-01",
    "bugzilla_seamonkey.jsonl": lambda r: r["day"] >= "2024-01-01",
    "github_issues.jsonl": lambda r: r.get("dataset", "").startswith("gitbugs/"),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, keep in SELECT.items():
        n = 0
        with open(SRC / name, encoding="utf-8") as src, open(OUT / name, "w", encoding="utf-8") as dst:
            for line in src:
                record = json.loads(line)
                if not keep(record):
                    continue
                record.pop("author_name", None)
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        print(f"{name}: {n} records")


if __name__ == "__main__":
    main()

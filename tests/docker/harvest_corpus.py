"""Copy the real docker-worker payloads of d2g's static test cases into ``corpus/valid-d2g-*.json``.

The d2g cases are payloads that real tasks used (gecko decision task, bugmon fuzzing...), so they are the
best free sample of what the model must accept.  Run it again after the reference changes:

    .venv/bin/python tests/docker/harvest_corpus.py

Identical payloads (d2g repeats one payload with different worker configs) are written once.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml


def shared_dir() -> Path:
    env = os.environ.get("MEGALODON_SHARED")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        for candidate in (parent / "shared", parent):
            if (candidate / "reference").is_dir() and candidate.name == "shared":
                return candidate
    raise SystemExit("cannot find shared/reference: set MEGALODON_SHARED")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main() -> int:
    cases_dir = shared_dir() / "reference" / "docker-worker" / "d2g-testcases"
    corpus = Path(__file__).resolve().parent / "corpus"
    corpus.mkdir(exist_ok=True)
    for old in corpus.glob("valid-d2g-*.json"):
        old.unlink()
    seen: set[str] = set()
    written = 0
    for case_file in sorted(cases_dir.glob("*.yml")):
        suite = yaml.safe_load(case_file.read_text()).get("testSuite")
        if not isinstance(suite, dict):
            continue
        cases = [(c, c["dockerWorkerTaskPayload"]) for c in suite.get("payloadTests") or []]
        cases += [(c, c["dockerWorkerTaskDefinition"]["payload"]) for c in suite.get("taskDefTests") or []]
        for index, (case, payload) in enumerate(cases):
            text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
            if text in seen:
                continue
            seen.add(text)
            name = f"valid-d2g-{slug(case_file.stem)}-{index:02d}-{slug(case['name'])}.json"
            (corpus / name).write_text(text)
            written += 1
    print(f"wrote {written} payloads to {corpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

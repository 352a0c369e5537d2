#!/usr/bin/python3
"""Checks docs/schedule.schema.json (kind: Schedule): the example of docs/schedules.md and a
schedule with an experiments/ file inline pass it; files faultline apply refuses for a key, a
concurrency, a duration or the experiment's source fail it.

Usage: check_schedule_schema.py SOURCE_ROOT. Needs python3-jsonschema and python3-yaml
(scripts/deps); exits 77 (skipped, with the reason) without them."""
import json
import pathlib
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:
    print(f"skipped: {e} (install python3-jsonschema and python3-yaml: scripts/deps)")
    sys.exit(77)

root = pathlib.Path(sys.argv[1])
schema = json.loads((root / "docs" / "schedule.schema.json").read_text())
experiment_schema = json.loads((root / "docs" / "experiment.schema.json").read_text())
jsonschema.Draft7Validator.check_schema(schema)
resolver = jsonschema.RefResolver.from_schema(schema, store={experiment_schema["$id"]: experiment_schema})
validator = jsonschema.Draft7Validator(schema, resolver=resolver)
failures = 0


def check(name, doc, valid):
    global failures
    errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if valid and errs:
        for e in errs:
            print(f"FAIL {name}: {'/'.join(map(str, e.path))}: {e.message[:300]}")
        failures += 1
    elif not valid and not errs:
        print(f"FAIL {name}: the schema accepts it; faultline apply refuses it")
        failures += 1
    else:
        print(f"ok   {name}{'' if valid else ' (refused)'}")


doc = (root / "docs" / "schedules.md").read_text()
start = doc.index("```yaml\napiVersion: faultline/v1\nkind: Schedule\n") + len("```yaml\n")
example = yaml.safe_load(doc[start:doc.index("```", start)])
check("docs/schedules.md (the schedule file example)", example, True)

inline = json.loads(json.dumps(example))
del inline["spec"]["experimentFile"]
inline["spec"]["experiment"] = yaml.safe_load((root / "experiments" / "quickstart.yaml").read_text())
check("the experiment inline (experiments/quickstart.yaml)", inline, True)
days = json.loads(json.dumps(example))
days["spec"]["startingDeadline"] = "7d"
check("startingDeadline in days", days, True)


def broken(name, change):
    d = json.loads(json.dumps(example))
    change(d)
    check(name, d, False)


broken("an unknown spec key", lambda d: d["spec"].update(cronn="x"))
broken("both experiment and experimentFile", lambda d: d["spec"].update(experiment=inline["spec"]["experiment"]))
broken("neither experiment nor experimentFile", lambda d: d["spec"].pop("experimentFile"))
broken("concurrency: sometimes", lambda d: d["spec"].update(concurrency="sometimes"))
broken("jitter: 20 (no unit)", lambda d: d["spec"].update(jitter="20"))
broken("no cron", lambda d: d["spec"].pop("cron"))
broken("kind: Experiment", lambda d: d.update(kind="Experiment"))
broken("a name with capitals", lambda d: d["metadata"].update(name="Nightly"))
broken("an inline experiment with an unknown key",
       lambda d: (d["spec"].pop("experimentFile"),
                  d["spec"].update(experiment=dict(inline["spec"]["experiment"], bogus=1))))
sys.exit(1 if failures else 0)

#!/usr/bin/env python3
"""Checks deploy/grafana/faultline.json: valid JSON, a Prometheus datasource variable that every
query uses, the fault windows as an annotation from faultline_fault_active, and every metric name
its queries use exported by faultline.

  check_dashboard.py DASHBOARD SOURCE_ROOT             names checked against the families the
                                                       source registers (string literals)
  check_dashboard.py DASHBOARD --metrics FILE [FILE...] names checked against real /metrics output
                                                       (its # TYPE lines)
Exit 0 when everything holds; else 1, one line per problem."""
import json
import pathlib
import re
import sys

NAME = re.compile(r"\bfaultline_[a-zA-Z0-9_]+")


def exported_from_source(root):
    """name -> type of each family registered in the C++ sources: r.counter("NAME", ...)."""
    out = {}
    call = re.compile(r'\b(counter|gauge|histogram)\(\s*"(faultline_[a-zA-Z0-9_]+)"', re.S)
    for folder in ("common", "agent", "controller"):
        for path in (pathlib.Path(root) / folder).rglob("*"):
            if path.suffix in (".cpp", ".h"):
                for kind, name in call.findall(path.read_text(errors="replace")):
                    out[name] = kind
    return out


def exported_from_metrics(files):
    out = {}
    for f in files:
        for line in pathlib.Path(f).read_text().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                out[name] = kind
    return out


def expressions(dashboard):
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield f"panel '{panel.get('title')}'", target.get("expr", ""), target.get("datasource")
    for a in dashboard.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield f"annotation '{a.get('name')}'", a["expr"], a.get("datasource")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    try:
        dashboard = json.loads(pathlib.Path(argv[1]).read_text())
    except (OSError, ValueError) as e:
        print(f"{argv[1]}: not valid JSON: {e}")
        return 1
    if argv[2] == "--metrics":
        exported = exported_from_metrics(argv[3:])
    else:
        exported = exported_from_source(argv[2])
    if not exported:
        problems.append("no exported metric family found to check against")

    variables = dashboard.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not ds:
        problems.append("no datasource variable of type prometheus in templating.list")
    ds_ref = "${%s}" % ds[0]["name"] if ds else None

    annotations = [a for a in dashboard.get("annotations", {}).get("list", []) if "faultline_fault_active" in a.get("expr", "")]
    if not annotations:
        problems.append("no annotation query over faultline_fault_active (the fault windows)")

    used = set()
    count = 0
    for where, expr, datasource in expressions(dashboard):
        count += 1
        if not expr.strip():
            problems.append(f"{where}: an empty query")
        if ds_ref and (not isinstance(datasource, dict) or datasource.get("uid") != ds_ref):
            problems.append(f"{where}: datasource {datasource!r} is not the variable {ds_ref}")
        for name in NAME.findall(expr):
            used.add(name)
            base = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and exported.get(name[: -len(suffix)]) == "histogram":
                    base = name[: -len(suffix)]
            if base not in exported:
                problems.append(f"{where}: {name} is not a metric faultline exports")
            elif base == name and exported[base] == "histogram":
                problems.append(f"{where}: {name} is a histogram: query its _bucket, _sum or _count")
    if count == 0:
        problems.append("no queries")
    for p in problems:
        print(p)
    if not problems:
        print(f"{argv[1]}: {count} queries over {len(used)} metric names, all exported")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/python3
"""Checks docs/experiment.schema.json: every file in experiments/ and the complete example of
docs/experiments.md pass it, and files the parser refuses for a key or a mode fail it.

Usage: check_schema.py SOURCE_ROOT. Needs Debian's python3-jsonschema and python3-yaml
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
schema = json.loads((root / "docs" / "experiment.schema.json").read_text())
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
failures = 0


def errors_of(doc):
    return sorted(validator.iter_errors(doc), key=lambda e: list(e.path))


def expect_valid(name, text):
    global failures
    errs = errors_of(yaml.safe_load(text))
    for e in errs:
        print(f"FAIL {name}: {'/'.join(map(str, e.path))}: {e.message}")
    failures += bool(errs)
    if not errs:
        print(f"ok   {name}")


def expect_invalid(name, text):
    global failures
    if errors_of(yaml.safe_load(text)):
        print(f"ok   {name} (refused)")
    else:
        print(f"FAIL {name}: the schema accepts it; faultline refuses it")
        failures += 1


files = sorted((root / "experiments").glob("*.yaml"))
if len(files) < 2:
    print(f"FAIL: found {len(files)} files in experiments/")
    failures += 1
for f in files:
    expect_valid(str(f.relative_to(root)), f.read_text())

doc = (root / "docs" / "experiments.md").read_text()
start = doc.index("```yaml\n") + len("```yaml\n")
expect_valid("docs/experiments.md (complete example)", doc[start:doc.index("```", start)])

header = "apiVersion: faultline/v1\nkind: Experiment\nmetadata: {name: t}\n"
wait = "method:\n  - wait: 1s\n"
expect_valid("variables, modes, probe and parallel steps", header +
             "targets: {selector: {role: '${ROLE}'}, mode: percent(50)}\n"
             "steadyState: {probes: [{name: web, http: {url: 'http://a/'}}]}\n"
             "method:\n  - probe: web\n  - parallel:\n"
             "    - fault: {type: process.kill, process: {name: x}}\n"
             "    - fault: {type: network.loss, duration: '${D}', target: {interface: eth0}, percent: 5}\n")
# Part B's probe kinds and SLOs: the docs' probes example with its SLOs example, and files the
# parser refuses.
probes_start = doc.index("```yaml\nsteadyState:\n") + len("```yaml\n")
probes_doc = doc[probes_start:doc.index("```", probes_start)]
slos_start = doc.index("```yaml\n  slos:\n") + len("```yaml\n")
slos_doc = doc[slos_start:doc.index("```", slos_start)]
expect_valid("docs/experiments.md (probes of every kind with SLOs)", header + probes_doc + slos_doc + wait)
expect_valid("probe options, quoted scalars", header +
             "steadyState:\n  probes:\n"
             "    - {name: a, guard: 'true', http: {url: 'http://a/', method: HEAD, expectStatus: '204'}}\n"
             "    - {name: b, command: {shell: 'test -e /tmp/x', expectExit: 1, timeout: 3s}}\n"
             "    - {name: c, http: {url: 'http://a/', expectStatus: 5XX}}\n"
             "  slos:\n    - {name: s, probe: a, objective: 'errors < 5%', maxBurnRate: 2.5}\n" + wait)
expect_valid("declared variables, one secret", header +
             "variables:\n  DB_DSN: {description: the database, secret: true}\n  REGION: {}\n" + wait)
expect_invalid("a variable with an unknown key", header + "variables:\n  A: {hidden: true}\n" + wait)
expect_invalid("a variable name that is not one", header + "variables:\n  9LIVES: {secret: true}\n" + wait)
probe_head = header + "steadyState:\n  probes:\n    - "
expect_invalid("probe without a kind", probe_head + "{name: a}\n" + wait)
expect_invalid("probe with two kinds", probe_head + "{name: a, http: {url: 'http://a/'}, tcp: {address: 'a:1'}}\n" + wait)
expect_invalid("unknown http method", probe_head + "{name: a, http: {url: 'http://a/', method: FETCH}}\n" + wait)
expect_invalid("status class 2x", probe_head + "{name: a, http: {url: 'http://a/', expectStatus: 2x}}\n" + wait)
expect_invalid("empty status list", probe_head + "{name: a, http: {url: 'http://a/', expectStatus: []}}\n" + wait)
expect_invalid("status 600", probe_head + "{name: a, http: {url: 'http://a/', expectStatus: [200, 600]}}\n" + wait)
expect_invalid("tcp without address", probe_head + "{name: a, tcp: {timeout: 1s}}\n" + wait)
expect_invalid("tcp key of http", probe_head + "{name: a, tcp: {address: 'a:1', url: 'http://a/'}}\n" + wait)
expect_valid("http and tcp load", probe_head + "{name: a, http: {url: 'http://a/', load: {rate: 200/s, concurrency: 16}}}\n"
             "    - {name: b, tcp: {address: 'a:1', load: {rate: 50, duration: 500ms}}}\n" + wait)
expect_invalid("load without rate", probe_head + "{name: a, http: {url: 'http://a/', load: {concurrency: 16}}}\n" + wait)
expect_invalid("load concurrency 257", probe_head + "{name: a, http: {url: 'http://a/', load: {rate: 1, concurrency: 257}}}\n"
               + wait)
expect_invalid("load rate 6000", probe_head + "{name: a, tcp: {address: 'a:1', load: {rate: 6000}}}\n" + wait)
expect_invalid("load key unknown", probe_head + "{name: a, tcp: {address: 'a:1', load: {rate: 1, connections: 2}}}\n" + wait)
expect_invalid("command with argv and shell", probe_head + "{name: a, command: {argv: [true], shell: 'true'}}\n" + wait)
expect_invalid("command with empty argv", probe_head + "{name: a, command: {argv: []}}\n" + wait)
expect_invalid("exit code 256", probe_head + "{name: a, command: {argv: [true], expectExit: 256}}\n" + wait)
expect_invalid("prometheus without expect", probe_head + "{name: a, prometheus: {url: 'http://p:9090', query: up}}\n" +
               wait)
expect_invalid("SLO without objective", probe_head + "{name: a, tcp: {address: 'a:1'}}\n"
               "  slos:\n    - {name: s, probe: a}\n" + wait)
expect_invalid("maxBurnRate 0", probe_head + "{name: a, tcp: {address: 'a:1'}}\n"
               "  slos:\n    - {name: s, probe: a, objective: 'errors < 1%', maxBurnRate: 0}\n" + wait)
expect_valid("minSamples and steadyState.after", probe_head + "{name: a, tcp: {address: 'a:1'}}\n"
             "  slos:\n    - {name: s, probe: a, objective: 'errors < 5% over 10s', minSamples: 8}\n"
             "  after: {settle: 5s, window: 30s}\n" + wait)
expect_invalid("minSamples 0", probe_head + "{name: a, tcp: {address: 'a:1'}}\n"
               "  slos:\n    - {name: s, probe: a, objective: 'errors < 1%', minSamples: 0}\n" + wait)
expect_invalid("unknown key of after", probe_head + "{name: a, tcp: {address: 'a:1'}}\n"
               "  after: {settle: 5s, windw: 30s}\n" + wait)
# Issue 17's protocol probes, command env and stdout number, http json.
expect_valid("protocol probes", header + "variables: {PW: {secret: true}}\n" +
             "steadyState:\n  probes:\n"
             "    - {name: r, redis: {address: 'unix:/run/r.sock', command: [LLEN, q], expect: {number: '< 100'}}}\n"
             "    - {name: r2, redis: {address: '10.0.0.1:6379', password: '${PW}', timeout: 1s}}\n"
             "    - {name: p, postgres: {host: /run/postgresql, port: 5433, user: u, database: d, sslmode: disable,"
             " query: 'SELECT 1', expect: {equals: '1'}}}\n"
             "    - {name: g, grpc: {address: '[::1]:50051', service: shop.v1.Orders}}\n"
             "    - {name: d, dns: {name: api.internal, server: '10.0.0.2:53', family: ipv4, expect: [10.0.0.1]}}\n"
             "    - {name: c, command: {argv: [x], env: {A_1: v}, stdout: {number: '>= 3'}}}\n"
             "    - {name: h, http: {url: 'http://a/', json: {pointer: /data/0/value, number: '< 0.05'}}}\n" + wait)
expect_invalid("redis without address", probe_head + "{name: a, redis: {command: [PING]}}\n" + wait)
expect_invalid("redis address without port", probe_head + "{name: a, redis: {address: cache}}\n" + wait)
expect_invalid("redis password written out", probe_head + "{name: a, redis: {address: 'a:1', password: hunter2}}\n" + wait)
expect_invalid("redis expect with two checks", probe_head +
               "{name: a, redis: {address: 'a:1', expect: {equals: a, number: '< 1'}}}\n" + wait)
expect_invalid("postgres sslmode verify-full", probe_head + "{name: a, postgres: {host: h, sslmode: verify-full}}\n" + wait)
expect_invalid("postgres port 70000", probe_head + "{name: a, postgres: {host: h, port: 70000}}\n" + wait)
expect_invalid("dns without name", probe_head + "{name: a, dns: {server: 10.0.0.2}}\n" + wait)
expect_invalid("dns family ip4", probe_head + "{name: a, dns: {name: a, family: ip4}}\n" + wait)
expect_invalid("grpc misspelt key", probe_head + "{name: a, grpc: {address: 'a:1', servce: x}}\n" + wait)
expect_invalid("command env name with a dash", probe_head + "{name: a, command: {argv: [x], env: {A-B: v}}}\n" + wait)
expect_invalid("command stdout without number", probe_head + "{name: a, command: {argv: [x], stdout: {}}}\n" + wait)
expect_invalid("json pointer without a slash", probe_head +
               "{name: a, http: {url: 'http://a/', json: {pointer: data, number: '< 1'}}}\n" + wait)
expect_invalid("json number without a comparison", probe_head +
               "{name: a, http: {url: 'http://a/', json: {pointer: /a, number: '5'}}}\n" + wait)
expect_invalid("unknown top-level key", header + "metod:\n  - wait: 1s\n")
expect_invalid("key of another fault type", header +
               "method:\n  - fault: {type: network.delay, target: {interface: e}, delay: 1ms, percent: 5}\n")
expect_invalid("misspelt http key", header + "steadyState: {probes: [{name: a, http: {url: 'http://a/', "
               "expectStaus: 200}}]}\n" + wait)
expect_invalid("unknown mode", header + "targets: {mode: some(3)}\n" + wait)
expect_invalid("bare number as a duration", header + "method:\n  - wait: 5\n")
expect_invalid("nested parallel", header + "method:\n  - parallel:\n    - parallel:\n      - wait: 1s\n")
expect_invalid("two keys in one step", header + "method:\n  - {wait: 1s, probe: a}\n")
# Issue 4's kinds: integer ranges, the selector's keys, one selector.
fault = header + "method:\n  - fault: "
expect_invalid("pidsMax 4294967296", fault + "{type: cgroup.squeeze, cgroup: /a, pidsMax: 4294967296}\n")
expect_invalid("workers -1", fault + "{type: stress.cpu, workers: -1}\n")
expect_invalid("misspelt selector key", fault + "{type: process.kill, process: {nmae: x}}\n")
expect_invalid("two selectors", fault + "{type: process.pause, process: {name: x, pid: 5}}\n")
expect_invalid("count and percent", fault + "{type: process.kill, process: {name: x, count: 1, percent: 5}}\n")
expect_invalid("stress.memory without bytes", fault + "{type: stress.memory}\n")
expect_valid("pause mechanism freeze", fault + "{type: process.pause, process: {name: x}, mechanism: freeze}\n")
expect_invalid("unknown pause mechanism", fault + "{type: process.pause, process: {name: x}, mechanism: sigstop}\n")

expect_valid("netns by process", header + "method:\n  - fault: {type: network.loss, target: "
             "{interface: eth0, netns: {systemdUnit: orders}}, percent: 5}\n")
expect_invalid("netns with count", header + "method:\n  - fault: {type: network.loss, target: "
               "{interface: eth0, netns: {name: x, count: 1}}, percent: 5}\n")
expect_valid("delay with keepOrder", fault + "{type: network.delay, target: {interface: e}, delay: 100ms, jitter: 50ms, "
             "keepOrder: true}\n")
expect_invalid("keepOrder not a boolean", fault + "{type: network.delay, target: {interface: e}, delay: 100ms, "
               "jitter: 50ms, keepOrder: maybe}\n")
expect_invalid("keepOrder on loss", fault + "{type: network.loss, target: {interface: e}, percent: 5, keepOrder: true}\n")

sys.exit(1 if failures else 0)

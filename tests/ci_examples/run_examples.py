#!/usr/bin/env python3
"""The pipelines of docs/ci.md, run for real.

Takes the shell commands out of each example in docs/ci.md (the fenced block after each
`<!-- ci-example: NAME -->`: GitHub Actions `run:`, GitLab CI `script:`, the Jenkinsfile's
`sh '''...'''`, the Argo CD Job's and the Spinnaker Run Job's container command and args) and
runs them against a real controller (TCP on loopback, an operator token in FAULTLINE_TOKEN), a
real agent and a real demo service on this machine: an experiment that holds (exit 0), one that is
violated (an SLO fails while the demo service is paused: exit 1), one that is aborted (a guard
probe fails: exit 2), and an unreachable controller (exit 3). Checks the exit code, the message
of the example, that the JUnit file validates against tests/junit/junit.xsd and that the journal
holds the verdict, and that the controller recorded every run with trigger ci.

Usage: run_examples.py SOURCE_DIR FAULTLINE FAULTLINE_AGENT FAULTLINE_DEMO. Needs root (the agent).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

EXAMPLES = ["github-actions", "gitlab-ci", "jenkins", "argocd", "spinnaker"]


def fail(message):
    print(f"ci_examples: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def blocks(markdown):
    """{name: (info string, text)} of the fenced block after each ci-example marker."""
    found = {}
    for m in re.finditer(r"<!-- ci-example: ([a-z-]+) -->\n```([a-z]*)\n(.*?)\n```\n", markdown, re.S):
        if m.group(1) in found:
            fail(f"docs/ci.md: ci-example {m.group(1)} twice")
        found[m.group(1)] = (m.group(2), m.group(3))
    return found


def gate_scripts(name, lang, text):
    """The shell scripts of the example that run faultline."""
    scripts = []
    if name == "github-actions":
        for job in yaml.safe_load(text)["jobs"].values():
            scripts += [s["run"] for s in job.get("steps", []) if "run" in s]
    elif name == "gitlab-ci":
        for key, job in yaml.safe_load(text).items():
            if isinstance(job, dict) and "script" in job:
                scripts.append("\n".join(job["script"]))
    elif name == "jenkins":
        scripts = re.findall(r"\bsh '''\n(.*?)'''", text, re.S)
    elif name in ("argocd", "spinnaker"):
        doc = yaml.safe_load(text) if lang == "yaml" else json.loads(text)
        job = doc["manifest"] if name == "spinnaker" else doc
        if job["kind"] != "Job":
            fail(f"{name}: not a Job")
        for c in job["spec"]["template"]["spec"]["containers"]:
            argv = c.get("command", []) + c.get("args", [])
            if argv[:2] != ["/bin/sh", "-c"] or len(argv) != 3:
                fail(f"{name}: container {c['name']} does not run /bin/sh -c SCRIPT: {argv}")
            scripts.append(argv[2])
    gates = [s for s in scripts if "faultline run" in s]
    if len(gates) != 1:
        fail(f"{name}: {len(gates)} steps run faultline, expected 1")
    gate = gates[0]
    for needed in ["--controller", "--trigger ci", "--junit", "--journal", "chaos/checkout-latency.yaml"]:
        if needed not in gate:
            fail(f"{name}: its faultline run has no {needed}")
    return gate


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def experiment(kind, demo_port, demo_pid):
    probe = f'{{url: "http://127.0.0.1:{demo_port}/", maxLatency: 300ms, timeout: 300ms}}'
    if kind == "held":
        return f"""apiVersion: faultline/v1
kind: Experiment
metadata:
  name: checkout-latency
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {probe}
method:
  - wait: 300ms
"""
    guard = "\n      guard: true" if kind == "aborted" else ""
    slo = """
  slos:
    - name: demo-errors
      probe: demo
      objective: errors < 1% over 1s""" if kind == "violated" else ""
    return f"""apiVersion: faultline/v1
kind: Experiment
metadata:
  name: checkout-latency
steadyState:
  every: 100ms
  probes:
    - name: demo{guard}
      http: {probe}{slo}
method:
  - fault:
      name: freeze-demo
      type: process.pause
      duration: 3s
      process: {{pid: {demo_pid}}}
  - wait: 3s
"""


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, argv, log):
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):  # the agent before the controller before the demo
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def wait_for(what, check, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    fail(f"{what} within {seconds}s")


def main():
    source, faultline, agent_bin, demo_bin = (os.path.abspath(a) for a in sys.argv[1:5])
    if os.geteuid() != 0:
        print("ci_examples: SKIP: needs root (the agent pauses a process)")
        sys.exit(77)
    with open(os.path.join(source, "docs/ci.md")) as f:
        found = blocks(f.read())
    if sorted(found) != sorted(EXAMPLES):
        fail(f"docs/ci.md: ci-example blocks {sorted(found)}, expected {sorted(EXAMPLES)}")
    gates = {name: gate_scripts(name, *found[name]) for name in EXAMPLES}
    xsd = os.path.join(source, "tests/junit/junit.xsd")

    tmp = tempfile.mkdtemp(prefix="faultline-ci-")
    procs = Processes()
    try:
        log = open(os.path.join(tmp, "processes.log"), "w")
        demo = procs.start([demo_bin, "--listen", "127.0.0.1:0"], log)
        demo_port = None

        def demo_listening():
            nonlocal demo_port
            with open(os.path.join(tmp, "processes.log")) as f:
                m = re.search(r"faultline-demo listening on 127\.0\.0\.1:(\d+)", f.read())
            demo_port = m and int(m.group(1))
            return demo_port is not None

        wait_for("the demo service listening", demo_listening)
        port = free_port()
        sock = os.path.join(tmp, "control.sock")
        procs.start([faultline, "controller", "--listen", f"127.0.0.1:{port}", "--socket", sock, "--db",
                     os.path.join(tmp, "controller.db")], log)
        wait_for("the controller's socket", lambda: os.path.exists(sock))
        local = ["--controller", f"unix:{sock}"]
        token = subprocess.run([faultline, "token", "create", "--role", "operator", "--name", "ci"] + local,
                               capture_output=True, text=True)
        if token.returncode != 0:
            fail(f"token create: {token.stderr}")
        token = token.stdout.strip()
        procs.start([agent_bin, "--controller", f"127.0.0.1:{port}", "--id", "ci-agent", "--label", "role=ci",
                     "--state-dir", os.path.join(tmp, "agent")], log)
        wait_for("the agent registered", lambda: "ci-agent" in subprocess.run(
            [faultline, "agents"] + local, capture_output=True, text=True).stdout)

        scenarios = [("held", 0, "held: the service tolerated the fault"),
                     ("violated", 1, "VIOLATED (exit 1)"),
                     ("aborted", 2, "ABORTED (exit 2)"),
                     ("error", 3, "ERROR (exit 3)")]
        recorded = 0
        for name in EXAMPLES:
            for kind, expected, message in scenarios:
                work = os.path.join(tmp, f"{name}-{kind}")
                os.makedirs(os.path.join(work, "chaos"))
                with open(os.path.join(work, "chaos/checkout-latency.yaml"), "w") as f:
                    f.write(experiment("held" if kind == "error" else kind, demo_port, demo.pid))
                env = dict(os.environ)
                env["PATH"] = os.path.dirname(faultline) + ":" + env["PATH"]
                env["FAULTLINE_TOKEN"] = token
                # Nothing listens on port 1: the controller is unreachable.
                env["FAULTLINE_CONTROLLER"] = "127.0.0.1:1" if kind == "error" else f"127.0.0.1:{port}"
                # GitHub runs `bash -e`, GitLab and Jenkins `sh -e`-like shells, the Jobs `/bin/sh -c`.
                shell = ["bash", "-e", "-c"] if name == "github-actions" else ["sh", "-e", "-c"]
                r = subprocess.run(shell + [gates[name]], cwd=work, env=env, capture_output=True, text=True,
                                   timeout=120)
                out = r.stdout + r.stderr
                what = f"{name}, {kind}"
                if r.returncode != expected:
                    fail(f"{what}: exit {r.returncode}, expected {expected}\n{out}")
                if message not in out:
                    fail(f"{what}: no '{message}' in its output\n{out}")
                if name == "spinnaker" and f"SPINNAKER_PROPERTY_FAULTLINE_EXIT={expected}" not in out:
                    fail(f"{what}: no stage output SPINNAKER_PROPERTY_FAULTLINE_EXIT={expected}\n{out}")
                if token in out:
                    fail(f"{what}: the token is in the output")
                junit = os.path.join(work, "faultline-junit.xml")
                journal = os.path.join(work, "faultline-journal.json")
                if kind == "error":
                    if os.path.exists(junit) or os.path.exists(journal):
                        fail(f"{what}: reports written for a run that never started")
                    continue
                recorded += 1
                if not os.path.exists(junit) or not os.path.exists(journal):
                    fail(f"{what}: no faultline-junit.xml or faultline-journal.json\n{out}")
                lint = subprocess.run(["xmllint", "--noout", "--schema", xsd, junit], capture_output=True, text=True)
                if lint.returncode != 0:
                    fail(f"{what}: the JUnit file does not validate: {lint.stderr}")
                with open(journal) as f:
                    j = json.load(f)
                if j["verdict"]["exitCode"] != expected or j["run"]["trigger"] != "ci":
                    fail(f"{what}: journal verdict {j['verdict']} trigger {j['run']['trigger']}")
                print(f"ci_examples: {what}: exit {expected}, {j['verdict']['verdict']}, reports written")

        # Every gate run is recorded with trigger ci, and history finds them by verdict.
        def runs(*args):
            r = subprocess.run([faultline, "runs", "--controller", f"127.0.0.1:{port}", "--limit", "100"] +
                               list(args), capture_output=True, text=True, env=dict(os.environ, FAULTLINE_TOKEN=token))
            if r.returncode != 0:
                fail(f"runs {args}: {r.stderr}")
            return [line for line in r.stdout.splitlines()[1:] if line.strip()]

        if len(runs("--trigger", "ci")) != recorded:
            fail(f"runs --trigger ci: {len(runs('--trigger', 'ci'))} runs, expected {recorded}")
        for verdict in ["held", "violated", "aborted"]:
            if len(runs("--trigger", "ci", "--verdict", verdict)) != len(EXAMPLES):
                fail(f"runs --trigger ci --verdict {verdict}: expected {len(EXAMPLES)}")
        if runs("--trigger", "schedule") or runs("--since", "2000-01-01", "--verdict", "error"):
            fail("runs: a filter matched runs it should not")
        if len(runs("--since", "1h", "--verdict", "violated", "--trigger", "ci")) != len(EXAMPLES):
            fail("runs --since 1h: the last hour's violated ci runs are missing")
        # Bad filters are refused with what is accepted, before the controller is asked.
        for args, says in [(["--since", "yesterday"], "accepted: a time ago (7d, 36h, 90m)"),
                           (["--verdict", "failed"], "accepted: held, violated, not-steady"),
                           (["--limit", "5000"], "more than the 1000 accepted")]:
            r = subprocess.run([faultline, "runs"] + local + args, capture_output=True, text=True)
            if r.returncode != 4 or says not in r.stderr:
                fail(f"runs {args}: exit {r.returncode}, {r.stderr}")

        # docs/ci.md's game day from CI: an operator token runs it (held, then violated: exit 1, the
        # third not run); a viewer token is refused before anything runs (SubmitRun needs operator).
        work = os.path.join(tmp, "gameday")
        os.makedirs(work)
        for i, kind in enumerate(["held", "violated", "held"]):
            with open(os.path.join(work, f"{i + 1}.yaml"), "w") as f:
                f.write(experiment(kind, demo_port, demo.pid).replace("checkout-latency", f"exp-{i + 1}"))
        viewer = subprocess.run([faultline, "token", "create", "--role", "viewer"] + local, capture_output=True,
                                text=True).stdout.strip()
        gameday = [faultline, "gameday", "1.yaml", "2.yaml", "3.yaml", "--controller", f"127.0.0.1:{port}",
                   "--junit", "gameday.xml", "--summary", "gameday.md"]
        r = subprocess.run(gameday, cwd=work, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, FAULTLINE_TOKEN=viewer))
        if r.returncode != 3 or "SubmitRun needs the operator role" not in r.stdout + r.stderr:
            fail(f"gameday with a viewer token: exit {r.returncode}\n{r.stdout}{r.stderr}")
        r = subprocess.run(gameday, cwd=work, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, FAULTLINE_TOKEN=token))
        print(r.stdout[r.stdout.find("#  EXPERIMENT"):])
        if r.returncode != 1 or "3  exp-3       not run" not in r.stdout:
            fail(f"gameday with an operator token: exit {r.returncode}\n{r.stdout}{r.stderr}")
        lint = subprocess.run(["xmllint", "--noout", "--schema", xsd, os.path.join(work, "gameday.xml")],
                              capture_output=True, text=True)
        if lint.returncode != 0:
            fail(f"gameday: the JUnit file does not validate: {lint.stderr}")
        if len(runs("--trigger", "gameday")) != 2:
            fail("gameday: runs --trigger gameday does not list its two runs")
        print(f"ci_examples: OK ({len(EXAMPLES)} pipelines, {recorded} runs recorded with trigger ci; a game day)")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

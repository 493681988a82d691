"""grain workers (and the resource tracker) do not outlive a SIGKILLed trainer."""
import os
import signal
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    from train_configs import tiny_config
    from jaxvision.tasks import build_data
    c = tiny_config()
    c.data.num_workers = 1
    it = iter(build_data(c.data, "resnet18").train_loader(0))
    next(it), next(it)
    print("ready", flush=True)
    time.sleep(600)
""")


def descendants(pid):
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_trainer_is_killed():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(here=HERE)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()[-3000:]
    workers = descendants(proc.pid)
    assert workers, "no worker process was started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if alive(p)]
    for p in left:  # do not leave them behind for the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(workers)} worker processes outlived the trainer"

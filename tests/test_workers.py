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


def test_the_segments_of_dead_trainers_only_are_removed(tmp_path, monkeypatch):
    # in a folder of its own: any trainer on this host (a parallel test's) cleans /dev/shm too
    from jaxvision.data import workers

    monkeypatch.setattr(workers, "SHM_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files = {f"{workers.segment_prefix(dead.pid)}a": 10, f"{workers.segment_prefix(dead.pid)}b": 5,
             f"{workers.segment_prefix(os.getpid())}c": 7,  # a live trainer's
             "psm_other": 3}  # not jaxvision's
    for name, size in files.items():
        (tmp_path / name).write_bytes(b"x" * size)
    assert workers.remove_dead_runs_segments() == (2, 15, [dead.pid])
    assert sorted(os.listdir(tmp_path)) == sorted(list(files)[2:])

#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, as a person at a terminal would, for host/tests/terminal.rs.

    pty_run.py foreground WAIT_FOR TYPE -- COMMAND...
        COMMAND runs in the terminal's foreground (the terminal is its controlling terminal).
        Once its output shows WAIT_FOR, TYPE is typed at the terminal (\\n and \\x03 escapes
        understood: \\x03 is Ctrl-C); then Ctrl-C is typed.
    pty_run.py background WAIT_FOR -- COMMAND...
        COMMAND runs in a process group of its own, in the background of a terminal that is
        its controlling terminal (as `COMMAND &` in an interactive shell). Once its output
        shows WAIT_FOR, the process must not be stopped (SIGTTIN) for 2 s; then SIGTERM.

Prints everything COMMAND wrote, then a last line: `exit=N` or `exit=signal N` (foreground),
`ended` (background, after SIGTERM), `stopped` (the terminal stopped it), or `timeout`.
Every wait is bounded.
"""
import os
import pty
import select
import signal
import sys
import time


def read_until(fd, out, needle, deadline):
    while needle.encode() not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return out
            if not chunk:
                return out
            out += chunk
    return out


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def wait_exit(pid, fd, out, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            out = read_until(fd, out, "\0never\0", time.monotonic() + 0.3)
            if os.WIFEXITED(status):
                return out, f"exit={os.WEXITSTATUS(status)}"
            return out, f"exit=signal {os.WTERMSIG(status)}"
        out = read_until(fd, out, "\0never\0", time.monotonic() + 0.1)
    return out, "timeout"


def main():
    mode = sys.argv[1]
    sep = sys.argv.index("--")
    wait_for = sys.argv[2]
    typed = sys.argv[3].encode().decode("unicode_escape").encode() if mode == "foreground" else b""
    command = sys.argv[sep + 1:]
    if mode == "foreground":
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp(command[0], command)
        out = read_until(fd, b"", wait_for, time.monotonic() + 30)
        if typed:
            os.write(fd, typed)
            time.sleep(0.5)
        os.write(fd, b"\x03")
        out, verdict = wait_exit(pid, fd, out, 10)
        if verdict == "timeout":
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    else:
        # The pty's session leader stays in the foreground; COMMAND gets a group of its own.
        leader, fd = pty.fork()
        if leader == 0:
            child = os.fork()
            if child == 0:
                os.setpgid(0, 0)
                os.execvp(command[0], command)
            print(child, flush=True)
            os.waitpid(child, 0)
            os._exit(0)
        out = read_until(fd, b"", "\n", time.monotonic() + 10)
        pid = int(out.split(b"\n", 1)[0].strip())
        out = read_until(fd, out, wait_for, time.monotonic() + 30)
        deadline = time.monotonic() + 2
        verdict = None
        while time.monotonic() < deadline:
            if state(pid) == "T":
                verdict = "stopped"
                break
            out = read_until(fd, out, "\0never\0", time.monotonic() + 0.1)
        os.kill(pid, signal.SIGCONT if verdict else signal.SIGTERM)
        if verdict:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
            out = read_until(fd, out, "\0never\0", time.monotonic() + 0.1)
        if verdict is None:
            verdict = "ended" if state(pid) in ("gone", "Z") else "timeout"
        if verdict == "timeout":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(leader, 0)
    sys.stdout.write(out.decode("utf-8", "replace"))
    print(f"\n{verdict}")


main()

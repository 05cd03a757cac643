"""How the demos (scripts/demo.py, scripts/demo_fleet.py) speak: a step in bold, a command and its output
dimmed, a check passed in green, a check failed in red (which ends the demo)."""
import sys
import time

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def say(text, pause=0.0):
    print(f"\n{BOLD}{text}{RESET}")
    if pause:
        time.sleep(pause)


def show(cmd, p):
    print(f"{DIM}$ {cmd}{RESET}")
    for line in (p.stdout + p.stderr).strip().splitlines():
        if "Warning: Permanently added" not in line:
            print("  " + line)


def ok(text):
    print(f"{GREEN}  ✔ {text}{RESET}")


def fail(text):
    print(f"{RED}  ✘ {text}{RESET}")
    raise SystemExit(1)

"""Open-loop load test of a running sidrec service: ``python -m deploy.loadtest --url URL``.

Requests are sent at *scheduled* times drawn from the offered rate, independent of how fast the
service answers, and latency is measured from the scheduled time. A closed loop (send, wait, send)
slows down with the server and hides queueing; this one does not, so the p99 it reports is what a
client arriving at that rate would see. Every response is checked for correctness, and the highest
rate whose p99 stays within the target is stated.

Modules: ``config`` (what to run, validated), ``workload`` (the request mix and the catalogue it is
checked against), ``checks`` (per-response correctness), ``runner`` (the open-loop scheduler),
``report`` (percentiles, the verdict, table, JSON and plot).
"""

from deploy.loadtest.config import LoadTestConfig
from deploy.loadtest.report import LoadTestReport, StepReport
from deploy.loadtest.runner import run_load_test

__all__ = ["LoadTestConfig", "LoadTestReport", "StepReport", "run_load_test"]

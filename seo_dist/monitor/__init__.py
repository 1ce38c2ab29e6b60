"""Watching a running job: heartbeats and hang detection, orphaned workers, stragglers, alerts.

:mod:`.heartbeat` (the training thread's few-microsecond record), :mod:`.board` (the launcher's store the
ranks publish to), :mod:`.verdict` (who is stuck where), :mod:`.dumps` (stacks and flight recorder),
:mod:`.hang_record` (recording a hang when rank 0 is the stuck one), :mod:`.orphan`, :mod:`.straggler`,
:mod:`.alerts` (webhook and command) and :mod:`.watchdog` (the per-rank thread that ties them together).
"""

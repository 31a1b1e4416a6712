"""A code-review agent. With `make run` going: source .arbiter/dev-keys.env && python examples/review_agent.py"""

import asyncio

from arbiter import Agent, PermanentError, Task

agent = Agent("reviewer-1", name="Reviewer", languages=["python"], max_concurrent_tasks=4)


@agent.handler("code-review")
async def review(task: Task) -> dict:
    diff = task.payload.get("diff")
    if not isinstance(diff, str):
        raise PermanentError("the payload needs a 'diff' string")  # FAILED at once, no retry
    await task.report_progress(0.5, "reading the diff")
    await asyncio.sleep(0.1)  # the real work goes here; any exception is retried
    return {"verdict": "request-changes" if "TODO" in diff else "approve", "lines": diff.count("\n")}


if __name__ == "__main__":
    agent.run()  # Ctrl-C or SIGTERM: finish the reviews in hand, then exit

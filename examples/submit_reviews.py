"""Submits a batch of reviews and waits for each verdict. Run it beside examples/review_agent.py."""

import asyncio

from arbiter import Client, TaskSpec


async def main() -> None:
    async with Client() as client:  # address and key from ARBITER_* variables, or the defaults
        diffs = ["+ print('hello')\n", "+ # TODO: tests\n", "+ x = 1\n+ y = 2\n"]
        batch = [TaskSpec("code-review", {"diff": diff}, languages=["python"]) for diff in diffs]
        for task in await client.submit_many(batch):
            done = await client.wait(task.id, timeout=60)
            print(f"{done.id}  {done.state.name:<9}  {done.result}")


if __name__ == "__main__":
    asyncio.run(main())

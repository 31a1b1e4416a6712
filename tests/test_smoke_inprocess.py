from google.protobuf.struct_pb2 import Struct

from arbiter.v1 import agent_pb2, orchestrator_service_pb2, registry_service_pb2, task_pb2
from shared.api_keys import Role
from tests.support.stack import Stack


async def test_registered_agent_receives_and_completes_a_submitted_task(stack: Stack) -> None:
    registry, orchestrator = stack.registry(), stack.orchestrator()
    agent = agent_pb2.Agent(
        id="agent-1", capabilities=agent_pb2.AgentCapabilities(task_types=["echo"]), max_concurrent_tasks=1
    )
    await registry.RegisterAgent(
        registry_service_pb2.RegisterAgentRequest(agent=agent), metadata=stack.as_role(Role.AGENT)
    )
    stream = orchestrator.StreamAssignments(
        orchestrator_service_pb2.StreamAssignmentsRequest(agent_id="agent-1"), metadata=stack.as_role(Role.AGENT)
    )
    payload = Struct()
    payload.update({"text": "hi"})
    submitted = await orchestrator.SubmitTask(
        orchestrator_service_pb2.SubmitTaskRequest(task_type="echo", payload=payload),
        metadata=stack.as_role(Role.SUBMITTER),
    )
    message = await stream.read()
    assert message.assignment.task.id == submitted.task.id
    completed = await orchestrator.CompleteTask(
        orchestrator_service_pb2.CompleteTaskRequest(
            task_id=submitted.task.id, agent_id="agent-1", attempt=message.assignment.attempt, result=payload
        ),
        metadata=stack.as_role(Role.AGENT),
    )
    assert completed.task.state == task_pb2.TASK_STATE_COMPLETED
    assert dict(completed.task.result) == {"text": "hi"}
    stream.cancel()

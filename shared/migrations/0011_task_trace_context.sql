-- The W3C trace context (traceparent, tracestate) of the call that submitted the task, sent to the agent
-- with each assignment so its work joins the submitter's trace (issue 8). NULL: submitted untraced.
ALTER TABLE tasks ADD COLUMN trace_context jsonb;

-- Tasks lose the trace context they were submitted with: those still to run are assigned untraced.
ALTER TABLE tasks DROP COLUMN trace_context;

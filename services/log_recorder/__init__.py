"""The log recorder: the only writer of job_logs / job_log_details; their truth is the stream."""

"""The HTTP layer under the OpenAI SDK: whose usage a request is (attribution), reading
response bodies (body), the metering transports (transport) and connection pools (pools)."""

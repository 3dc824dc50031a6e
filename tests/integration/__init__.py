"""End-to-end tests: real mock LLM, API and worker processes against a real RabbitMQ broker."""

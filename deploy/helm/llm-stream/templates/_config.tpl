{{/*
Settings shared by the API and the workers (environment variable: value). Each component's
ConfigMap starts with these.
*/}}
{{- define "llm-stream.sharedConfig" -}}
{{- $root := index . 0 }}
{{- $data := index . 1 }}
{{- $c := $root.Values.config }}
{{- $l := $root.Values.llm }}
{{- include "llm-stream.setEnv" (list $data "TASK_QUEUE" $c.taskQueue) }}
{{- include "llm-stream.setEnv" (list $data "EVENTS_STREAM" $c.eventsStream) }}
{{- include "llm-stream.setEnv" (list $data "PRESENCE_EXCHANGE" $c.presenceExchange) }}
{{- include "llm-stream.setEnv" (list $data "DEAD_LETTER_EXCHANGE" $c.deadLetterExchange) }}
{{- include "llm-stream.setEnv" (list $data "DEAD_LETTER_QUEUE" $c.deadLetterQueue) }}
{{- include "llm-stream.setEnv" (list $data "TASK_MAX_DELIVERIES" $c.taskMaxDeliveries) }}
{{- include "llm-stream.setEnv" (list $data "MAX_QUEUED_TASKS" $c.maxQueuedTasks) }}
{{- with $root.Values.rabbitmq.topology }}
{{- include "llm-stream.setEnv" (list $data "QUEUE_REPLICAS" .queueReplicas) }}
{{- if gt (int (default 1 .taskShards)) 1 }}
{{- include "llm-stream.setEnv" (list $data "TASK_SHARDS" .taskShards) }}
{{- end }}
{{- include "llm-stream.setEnv" (list $data "STREAM_REPLICAS" .streamReplicas) }}
{{- include "llm-stream.setEnv" (list $data "QUEUE_LEADER_LOCATOR" .queueLeaderLocator) }}
{{- include "llm-stream.setEnv" (list $data "AMQP_HEARTBEAT_S" .heartbeatSeconds) }}
{{- end }}
{{- include "llm-stream.setEnv" (list $data "LOG_LEVEL" $c.logLevel) }}
{{- include "llm-stream.setEnv" (list $data "LOG_FORMAT" $c.logFormat) }}
{{- with include "llm-stream.openaiBaseUrl" $root }}
{{- include "llm-stream.setEnv" (list $data "OPENAI_BASE_URL" .) }}
{{- end }}
{{- include "llm-stream.setEnv" (list $data "LLM_MODEL" (include "llm-stream.apiModel" $root)) }}
{{- include "llm-stream.setEnv" (list $data "LLM_TIMEOUT_S" $l.timeoutSeconds) }}
{{- include "llm-stream.setEnv" (list $data "LLM_MAX_RETRIES" $l.maxRetries) }}
{{- include "llm-stream.setEnv" (list $data "LLM_MAX_TOKENS" $l.maxTokens) }}
{{- include "llm-stream.setEnv" (list $data "SYSTEM_PROMPT" $l.systemPrompt) }}
{{- end }}

{{/* The environment of the API container (ConfigMap part), as a dict. */}}
{{- define "llm-stream.apiConfig" -}}
{{- $data := dict }}
{{- include "llm-stream.sharedConfig" (list . $data) }}
{{- $a := .Values.api }}
{{- include "llm-stream.setEnv" (list $data "PORT" $a.port) }}
{{- include "llm-stream.setEnv" (list $data "UVICORN_WORKERS" $a.uvicornWorkers) }}
{{- include "llm-stream.setEnv" (list $data "MAX_MESSAGE_CHARS" $a.maxMessageChars) }}
{{- include "llm-stream.setEnv" (list $data "MAX_MESSAGES" $a.maxMessages) }}
{{- include "llm-stream.setEnv" (list $data "MAX_CHOICES" $a.maxChoices) }}
{{- include "llm-stream.setEnv" (list $data "MAX_TOTAL_CHARS" $a.maxTotalChars) }}
{{- include "llm-stream.setEnv" (list $data "MODELS_ALLOWED" $a.modelsAllowed) }}
{{- include "llm-stream.setEnv" (list $data "ENQUEUE_TIMEOUT_S" $a.enqueueTimeoutSeconds) }}
{{- include "llm-stream.setEnv" (list $data "STREAM_WAIT_TIMEOUT_S" $a.streamWaitTimeoutSeconds) }}
{{- include "llm-stream.setEnv" (list $data "SESSION_TTL_S" $a.sessionTtlSeconds) }}
{{- include "llm-stream.setEnv" (list $data "RESPONSES_STORE_S" $a.responsesStoreSeconds) }}
{{- include "llm-stream.setEnv" (list $data "SSE_PING_S" $a.ssePingSeconds) }}
{{- include "llm-stream.setEnv" (list $data "PRESENCE_INTERVAL_S" $a.presenceIntervalSeconds) }}
{{- include "llm-stream.setEnv" (list $data "CHAT_DIRECT_LLM" $a.chatDirectLlm) }}
{{- include "llm-stream.setEnv" (list $data "MAX_OPEN_STREAMS" $a.maxOpenStreams) }}
{{- include "llm-stream.setEnv" (list $data "RETRY_AFTER_MAX_S" $a.retryAfterMaxSeconds) }}
{{- with .Values.auth }}
{{- if .existingSecret }}
{{- include "llm-stream.setEnv" (list $data "API_KEYS_FILE" (printf "/etc/llm-stream/api-keys/%s" .secretKey)) }}
{{- include "llm-stream.setEnv" (list $data "KEY_REQUESTS_PER_MINUTE" .requestsPerMinute) }}
{{- include "llm-stream.setEnv" (list $data "KEY_MAX_SESSIONS" .maxSessions) }}
{{- include "llm-stream.setEnv" (list $data "KEY_TOKENS_PER_MINUTE" .tokensPerMinute) }}
{{- include "llm-stream.setEnv" (list $data "API_KEYS_OPEN_PROBES" .openProbes) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* The environment of the worker container (ConfigMap part), as a dict. */}}
{{- define "llm-stream.workerConfig" -}}
{{- $data := dict }}
{{- include "llm-stream.sharedConfig" (list . $data) }}
{{- $w := .Values.worker }}
{{- include "llm-stream.setEnv" (list $data "WORKER_CONCURRENCY" $w.concurrency) }}
{{- include "llm-stream.setEnv" (list $data "LANE_MIN_SHARE" $w.laneMinShare) }}
{{- include "llm-stream.setEnv" (list $data "METRICS_PORT" $w.metricsPort) }}
{{- include "llm-stream.setEnv" (list $data "FLUSH_INTERVAL_MS" $w.flushIntervalMs) }}
{{- include "llm-stream.setEnv" (list $data "ABANDON_TIMEOUT_S" $w.abandonTimeoutSeconds) }}
{{- include "llm-stream.setEnv" (list $data "SHUTDOWN_GRACE_S" (include "llm-stream.worker.shutdownGrace" . | int)) }}
{{- if .Values.pools }}
{{- /* Set per pool in each pool's Deployment. */}}
{{- $_ := unset $data "OPENAI_BASE_URL" }}
{{- $_ := unset $data "LLM_MODEL" }}
{{- $_ := unset $data "WORKER_CONCURRENCY" }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* llm-stream.setEnv (list $dict "KEY" value): sets KEY to value as a string, unless null. */}}
{{- define "llm-stream.setEnv" -}}
{{- $v := index . 2 }}
{{- if not (kindIs "invalid" $v) }}
{{- $_ := set (index . 0) (index . 1) (include "llm-stream.str" $v) }}
{{- end }}
{{- end }}

{{/*
Broker credentials, from the chart's Secret or an existing one. With the Cluster Operator, from
the Secret it generates for the cluster's default user: its username and password come first,
and the URLs are assembled from them by Kubernetes' $(VAR) expansion (a variable may refer to
the ones listed before it), so no credential is written into the manifests.
*/}}
{{- define "llm-stream.brokerEnv" -}}
{{- if include "llm-stream.brokerOperator" . -}}
{{- $secret := include "llm-stream.rabbitmq.defaultUserSecret" . -}}
- name: RABBITMQ_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: username
- name: RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: password
- name: RABBIT_MQ
  value: {{ printf "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@%s:5672/" (include "llm-stream.rabbitmq.host" .) | quote }}
- name: RABBITMQ_MANAGEMENT_URL
  value: {{ printf "http://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@%s:15672" (include "llm-stream.rabbitmq.host" .) | quote }}
{{- else -}}
- name: RABBIT_MQ
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-stream.brokerSecretName" . }}
      key: {{ include "llm-stream.brokerUrlKey" . }}
- name: RABBITMQ_MANAGEMENT_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-stream.brokerSecretName" . }}
      key: {{ include "llm-stream.brokerManagementUrlKey" . }}
{{- end }}
{{- end }}

{{- define "llm-stream.llmKeyEnv" -}}
{{- if include "llm-stream.hasLlmKey" . -}}
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-stream.llmSecretName" . }}
      key: {{ include "llm-stream.llmSecretKey" . }}
{{- end }}
{{- end }}

{{/* LLM_MODEL of the API, for requests naming no model: with pools, the default pool's first
model (llm.model if it lists none). */}}
{{- define "llm-stream.apiModel" -}}
{{- $model := .Values.llm.model }}
{{- $default := include "llm-stream.defaultPoolName" . }}
{{- range .Values.pools }}
{{- if and (eq .name $default) .models }}{{ $model = first .models }}{{ end }}
{{- end }}
{{- $model }}
{{- end }}

{{/*
Refuse value combinations that cannot work, with a message that says what to change.
Rendered by templates/validate.yaml, so `helm template`, `helm install` and `helm lint` all stop.
*/}}
{{- define "llm-stream.validate" -}}
{{- $r := .Values.rabbitmq }}
{{- $sources := 0 }}
{{- if $r.internal.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if $r.existingSecret.name }}{{ $sources = add1 $sources }}{{ end }}
{{- if eq $sources 0 }}
{{- fail "\n\nllm-stream: no broker. Set rabbitmq.url (production), rabbitmq.existingSecret.name, or rabbitmq.internal.enabled=true (demo)." }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "\n\nllm-stream: choose one broker: rabbitmq.url, rabbitmq.existingSecret.name or rabbitmq.internal.enabled, not several." }}
{{- end }}
{{- if $r.url }}
{{- $u := urlParse $r.url }}
{{- if not (has $u.scheme (list "amqp" "amqps")) }}
{{- fail (printf "\n\nllm-stream: rabbitmq.url must be an amqp:// or amqps:// URL, got scheme %q." $u.scheme) }}
{{- end }}
{{- if and $r.vhost (ne $r.vhost (include "llm-stream.urlVhost" $r.url)) }}
{{- fail (printf "\n\nllm-stream: rabbitmq.vhost %q differs from the vhost of rabbitmq.url %q; the workers consume on the URL's, so leave rabbitmq.vhost empty." $r.vhost (include "llm-stream.urlVhost" $r.url)) }}
{{- end }}
{{- end }}
{{- if and $r.managementUrl (not (hasPrefix "http" $r.managementUrl)) }}
{{- fail "\n\nllm-stream: rabbitmq.managementUrl must be an http:// or https:// URL." }}
{{- end }}
{{- if and $r.internal.enabled $r.internal.auth.password (not (regexMatch "^[A-Za-z0-9._~-]+$" $r.internal.auth.password)) }}
{{- fail "\n\nllm-stream: rabbitmq.internal.auth.password may hold only letters, digits and -._~ (it is written into URLs)." }}
{{- end }}
{{- if and $r.internal.enabled (not (regexMatch "^[A-Za-z0-9._~-]+$" $r.internal.auth.username)) }}
{{- fail "\n\nllm-stream: rabbitmq.internal.auth.username may hold only letters, digits and -._~ (it is written into URLs)." }}
{{- end }}

{{- $l := .Values.llm }}
{{- if and $l.apiKey $l.existingSecret.name }}
{{- fail "\n\nllm-stream: set llm.apiKey or llm.existingSecret.name, not both." }}
{{- end }}
{{- if and .Values.mockllm.enabled $l.baseUrl }}
{{- fail "\n\nllm-stream: mockllm.enabled points OPENAI_BASE_URL at the mock; leave llm.baseUrl empty, or disable the mock." }}
{{- end }}
{{- if not (or $l.baseUrl .Values.mockllm.enabled (include "llm-stream.hasLlmKey" .)) }}
{{- fail "\n\nllm-stream: no LLM. api.openai.com needs a key: set llm.apiKey or llm.existingSecret.name; or set llm.baseUrl to an OpenAI-compatible endpoint; or mockllm.enabled=true for a demo." }}
{{- end }}

{{- $k := .Values.worker.keda }}
{{- if $k.enabled }}
{{- if gt (int $k.minReplicas) (int $k.maxReplicas) }}
{{- fail (printf "\n\nllm-stream: worker.keda.minReplicas (%v) is above worker.keda.maxReplicas (%v)." $k.minReplicas $k.maxReplicas) }}
{{- end }}
{{- if and (not (kindIs "invalid" $k.idleReplicaCount)) (ge (int $k.idleReplicaCount) (int $k.minReplicas)) }}
{{- fail "\n\nllm-stream: worker.keda.idleReplicaCount must be below worker.keda.minReplicas (KEDA rule)." }}
{{- end }}
{{- end }}
{{- $a := .Values.api.autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "\n\nllm-stream: api.autoscaling.minReplicas (%v) is above api.autoscaling.maxReplicas (%v)." $a.minReplicas $a.maxReplicas) }}
{{- end }}

{{- $workerGrace := include "llm-stream.worker.terminationGrace" . | int }}
{{- $workerStop := include "llm-stream.worker.stopSeconds" . | int }}
{{- if le $workerGrace $workerStop }}
{{- fail (printf "\n\nllm-stream: worker.terminationGracePeriodSeconds (%d) must exceed preStop + the longest generation (%d s: worker.preStopSleepSeconds + max(SHUTDOWN_GRACE_S, LLM_TIMEOUT_S)), or Kubernetes kills workers mid-answer. Leave it null to derive it." $workerGrace $workerStop) }}
{{- end }}
{{- $apiGrace := include "llm-stream.api.terminationGrace" . | int }}
{{- $apiStop := include "llm-stream.api.stopSeconds" . | int }}
{{- if le $apiGrace $apiStop }}
{{- fail (printf "\n\nllm-stream: api.terminationGracePeriodSeconds (%d) must exceed preStop + the stream drain (%d s: api.preStopSleepSeconds + api.drainSeconds). Leave it null to derive it." $apiGrace $apiStop) }}
{{- end }}

{{- if and .Values.api.ingress.enabled (not .Values.api.ingress.hosts) }}
{{- fail "\n\nllm-stream: api.ingress.enabled needs at least one entry in api.ingress.hosts." }}
{{- end }}
{{- end }}

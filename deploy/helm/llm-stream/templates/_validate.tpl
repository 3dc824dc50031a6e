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
{{- if not .Values.pools }}
{{- if not (or $l.baseUrl .Values.mockllm.enabled (include "llm-stream.hasLlmKey" .)) }}
{{- fail "\n\nllm-stream: no LLM. api.openai.com needs a key: set llm.apiKey or llm.existingSecret.name; or set llm.baseUrl to an OpenAI-compatible endpoint; or mockllm.enabled=true for a demo." }}
{{- end }}
{{- end }}

{{- include "llm-stream.validatePools" . }}

{{- $k := .Values.worker.keda }}
{{- if $k.enabled }}
{{- range include "llm-stream.workerPools" . | fromJsonArray }}
{{- $s := .scaling }}
{{- if .implicit }}
{{- if gt (int $s.minReplicas) (int $s.maxReplicas) }}
{{- fail (printf "\n\nllm-stream: worker.keda.minReplicas (%v) is above worker.keda.maxReplicas (%v)." $s.minReplicas $s.maxReplicas) }}
{{- end }}
{{- if and (not (kindIs "invalid" $k.idleReplicaCount)) (ge (int $k.idleReplicaCount) (int $s.minReplicas)) }}
{{- fail "\n\nllm-stream: worker.keda.idleReplicaCount must be below worker.keda.minReplicas (KEDA rule)." }}
{{- end }}
{{- else }}
{{- if gt (int $s.minReplicas) (int $s.maxReplicas) }}
{{- fail (printf "\n\nllm-stream: %s: minReplicas (%v) is above maxReplicas (%v) (scaling, else worker.keda)." .where $s.minReplicas $s.maxReplicas) }}
{{- end }}
{{- if and (not (kindIs "invalid" $k.idleReplicaCount)) (ge (int $k.idleReplicaCount) (int $s.minReplicas)) }}
{{- fail (printf "\n\nllm-stream: worker.keda.idleReplicaCount must be below the minReplicas of every pool (KEDA rule); %s has %v." .where $s.minReplicas) }}
{{- end }}
{{- if and .regex (eq $k.protocol "amqp") }}
{{- fail (printf "\n\nllm-stream: %s has several lanes, and KEDA matches several queues only through the management API: set worker.keda.protocol=http." .where) }}
{{- end }}
{{- end }}
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

{{/*
Model pools: what LLM_POOLS may say (the workers and the API refuse the rest at start-up, too
late for a rollout), and an LLM for each pool.
*/}}
{{- define "llm-stream.validatePools" -}}
{{- $reserved := list "priority" "flex" "dead" "log" "intake" "keeper" "watermarks" "positions" "notices" "events" "cancels" }}
{{- $names := dict }}
{{- $defaults := list }}
{{- $claims := dict }}
{{- range $i, $p := .Values.pools }}
{{- $where := printf "pools[%d]" $i }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$" (toString $p.name)) }}
{{- fail (printf "\n\nllm-stream: %s: pool name %q is not a lower-case DNS label of at most 32 characters." $where (toString $p.name)) }}
{{- end }}
{{- if has $p.name $reserved }}
{{- fail (printf "\n\nllm-stream: %s: pool name %q is reserved (a lane or a queue suffix: %s)." $where $p.name (join ", " $reserved)) }}
{{- end }}
{{- if hasKey $names $p.name }}
{{- fail (printf "\n\nllm-stream: two pools are named %q (%s and %s); pool names must be unique." $p.name (get $names $p.name) $where) }}
{{- end }}
{{- $_ := set $names $p.name $where }}
{{- if $p.default }}{{ $defaults = append $defaults $p.name }}{{ end }}
{{- $lanes := default (list "default") $p.lanes }}
{{- if not (has "default" $lanes) }}
{{- fail (printf "\n\nllm-stream: pool %q: lanes %v must include default." $p.name $lanes) }}
{{- end }}
{{- range $lanes }}
{{- if not (has . (list "priority" "default" "flex")) }}
{{- fail (printf "\n\nllm-stream: pool %q: unknown lane %q (lanes are priority, default, flex)." $p.name .) }}
{{- end }}
{{- end }}
{{- range $model := default list $p.models }}
{{- if and (hasKey $claims $model) (ne (get $claims $model) $p.name) }}
{{- fail (printf "\n\nllm-stream: model %q is claimed by pools %q and %q; a model or alias belongs to one pool." $model (get $claims $model) $p.name) }}
{{- end }}
{{- $_ := set $claims $model $p.name }}
{{- end }}
{{- end }}
{{- if gt (len $defaults) 1 }}
{{- fail (printf "\n\nllm-stream: more than one pool has default: true (%s); at most one may (none: the first pool)." (join ", " $defaults)) }}
{{- end }}
{{- /* Aliases, once every pool's models are known. */}}
{{- range $p := .Values.pools }}
{{- range $alias, $model := default dict $p.aliases }}
{{- if not (has $model (default list $p.models)) }}
{{- if and (hasKey $claims $model) (ne (get $claims $model) $p.name) }}
{{- fail (printf "\n\nllm-stream: alias %q of pool %q names %q, a model of pool %q; an alias names a model of its own pool." $alias $p.name $model (get $claims $model)) }}
{{- end }}
{{- fail (printf "\n\nllm-stream: alias %q of pool %q names %q, which is not one of its models." $alias $p.name $model) }}
{{- end }}
{{- if and (hasKey $claims $alias) (ne (get $claims $alias) $p.name) }}
{{- fail (printf "\n\nllm-stream: model %q is claimed by pools %q and %q; a model or alias belongs to one pool." $alias (get $claims $alias) $p.name) }}
{{- end }}
{{- $_ := set $claims $alias $p.name }}
{{- end }}
{{- end }}
{{- range include "llm-stream.workerPools" . | fromJsonArray }}
{{- if and (not .implicit) (not .baseUrl) (not .keySecret) }}
{{- fail (printf "\n\nllm-stream: pool %q has no LLM: api.openai.com needs a key. Set its upstream.apiKeySecret (or llm.apiKey / llm.existingSecret.name), or its upstream.baseUrl (or llm.baseUrl, or mockllm.enabled=true)." .name) }}
{{- end }}
{{- end }}
{{- end }}

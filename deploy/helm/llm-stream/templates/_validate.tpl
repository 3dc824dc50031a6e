{{/*
Refuse value combinations that cannot work, with a message that says what to change.
Rendered by templates/validate.yaml, so `helm template`, `helm install` and `helm lint` all stop.
*/}}
{{- define "llm-stream.validate" -}}
{{- $r := .Values.rabbitmq }}
{{- $mode := include "llm-stream.brokerMode" . }}
{{- $sources := list }}
{{- if $r.internal.enabled }}{{ $sources = append $sources "rabbitmq.internal.enabled" }}{{ end }}
{{- if $r.url }}{{ $sources = append $sources "rabbitmq.url" }}{{ end }}
{{- if $r.existingSecret.name }}{{ $sources = append $sources "rabbitmq.existingSecret.name" }}{{ end }}
{{- if eq $mode "" }}
{{- fail "\n\nllm-stream: no broker. Set rabbitmq.mode: embedded (one node, for development), operator (a RabbitmqCluster of the RabbitMQ Cluster Operator) or external (rabbitmq.url or rabbitmq.existingSecret.name). docs/deploy.md, \"The broker in production\"." }}
{{- end }}
{{- if and (not $r.mode) (gt (len $sources) 1) }}
{{- fail (printf "\n\nllm-stream: choose one broker: rabbitmq.url, rabbitmq.existingSecret.name or rabbitmq.internal.enabled, not several (set: %s)." (join ", " $sources)) }}
{{- end }}
{{- if eq $mode "embedded" }}
{{- if or $r.url $r.existingSecret.name $r.managementUrl }}
{{- fail "\n\nllm-stream: choose one broker: rabbitmq.mode=embedded runs the broker in the release; leave rabbitmq.url, rabbitmq.managementUrl and rabbitmq.existingSecret.name empty." }}
{{- end }}
{{- else if eq $mode "operator" }}
{{- if or $r.internal.enabled $r.url $r.existingSecret.name $r.managementUrl }}
{{- fail "\n\nllm-stream: choose one broker: rabbitmq.mode=operator connects to the RabbitmqCluster of the release (credentials from the operator's Secret); leave rabbitmq.internal.enabled false and rabbitmq.url, rabbitmq.managementUrl and rabbitmq.existingSecret.name empty." }}
{{- end }}
{{- if and $r.vhost (ne $r.vhost "/") }}
{{- fail (printf "\n\nllm-stream: rabbitmq.vhost %q: with rabbitmq.mode=operator the services use the default vhost, /, on which the operator's default user has its permissions; leave rabbitmq.vhost empty." $r.vhost) }}
{{- end }}
{{- $o := $r.operator }}
{{- if eq (mod (int $o.replicas) 2) 0 }}
{{- fail (printf "\n\nllm-stream: rabbitmq.operator.replicas is %d; use an odd number (1, 3, 5). A quorum queue or stream needs a majority of its members: %d nodes survive the loss of %d, no more than %d would, and on a partition into two halves pause_minority stops every node." (int $o.replicas) (int $o.replicas) (sub (div (int $o.replicas) 2) 1) (sub (int $o.replicas) 1)) }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$" (include "llm-stream.rabbitmq.clusterName" .)) }}
{{- fail (printf "\n\nllm-stream: rabbitmq.operator.name %q must be a lower-case DNS label of at most 45 characters starting with a letter (the operator names its StatefulSet <name>-server)." (include "llm-stream.rabbitmq.clusterName" .)) }}
{{- end }}
{{- else if eq $mode "external" }}
{{- if $r.internal.enabled }}
{{- fail "\n\nllm-stream: choose one broker: rabbitmq.mode=external uses a broker outside the release; set rabbitmq.internal.enabled=false (or rabbitmq.mode=embedded)." }}
{{- end }}
{{- if not (or $r.url $r.existingSecret.name) }}
{{- fail "\n\nllm-stream: rabbitmq.mode=external needs the broker's URL: rabbitmq.existingSecret.name (a Secret with the AMQP and management URLs) or rabbitmq.url." }}
{{- end }}
{{- if and $r.url $r.existingSecret.name }}
{{- fail "\n\nllm-stream: choose one broker: rabbitmq.url or rabbitmq.existingSecret.name, not both." }}
{{- end }}
{{- end }}
{{- if $r.url }}
{{- $urls := include "llm-stream.brokerUrls" . | fromJsonArray }}
{{- $vhosts := list }}
{{- range $urls }}
{{- $u := urlParse . }}
{{- if not (has $u.scheme (list "amqp" "amqps")) }}
{{- fail (printf "\n\nllm-stream: rabbitmq.url must be an amqp:// or amqps:// URL (or a comma-separated list of them), got scheme %q." $u.scheme) }}
{{- end }}
{{- $vhosts = append $vhosts (include "llm-stream.urlVhost" .) }}
{{- end }}
{{- if gt (len (uniq $vhosts)) 1 }}
{{- fail (printf "\n\nllm-stream: the node URLs of rabbitmq.url name different vhosts (%s); they are nodes of one broker, with one vhost." (join ", " (uniq $vhosts))) }}
{{- end }}
{{- if and $r.vhost (ne $r.vhost (first $vhosts)) }}
{{- fail (printf "\n\nllm-stream: rabbitmq.vhost %q differs from the vhost of rabbitmq.url %q; the workers consume on the URL's, so leave rabbitmq.vhost empty." $r.vhost (first $vhosts)) }}
{{- end }}
{{- if and (gt (len $urls) 1) .Values.worker.keda.enabled (eq .Values.worker.keda.protocol "amqp") }}
{{- fail "\n\nllm-stream: rabbitmq.url is a list of node URLs, and KEDA's amqp protocol reads one URL: keep worker.keda.protocol=http (the management URL), or give one load-balanced URL." }}
{{- end }}
{{- end }}
{{- if and $r.managementUrl (not (hasPrefix "http" $r.managementUrl)) }}
{{- fail "\n\nllm-stream: rabbitmq.managementUrl must be an http:// or https:// URL." }}
{{- end }}
{{- if eq $mode "embedded" }}
{{- if and $r.internal.auth.password (not (regexMatch "^[A-Za-z0-9._~-]+$" $r.internal.auth.password)) }}
{{- fail "\n\nllm-stream: rabbitmq.internal.auth.password may hold only letters, digits and -._~ (it is written into URLs)." }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9._~-]+$" $r.internal.auth.username) }}
{{- fail "\n\nllm-stream: rabbitmq.internal.auth.username may hold only letters, digits and -._~ (it is written into URLs)." }}
{{- end }}
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

{{/*
Model pools (docs/adr/0006). `pools` empty: one pool, `default`, from worker.* and llm.*, whose
objects keep the names and selectors they had before pools existed. Otherwise a worker
Deployment, PDB and ScaledObject per pool, named <fullname>-worker-<pool>.
*/}}

{{- define "llm-stream.poolLabelKey" -}}llm-stream.io/pool{{- end }}

{{/* Lanes in scheduling order, highest first. */}}
{{- define "llm-stream.lanes" -}}priority,default,flex{{- end }}

{{/* The pool requests naming no model go to: the one marked default, else the first. */}}
{{- define "llm-stream.defaultPoolName" -}}
{{- $name := "default" }}
{{- with .Values.pools }}
{{- $name = (first .).name }}
{{- range . }}{{ if .default }}{{ $name = .name }}{{ end }}{{ end }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The task queue of a pool's lane: llm-stream.laneQueue (list . "large" "flex") */}}
{{- define "llm-stream.laneQueue" -}}
{{- $root := index . 0 }}
{{- $pool := index . 1 }}
{{- $lane := index . 2 }}
{{- $base := ternary $root.Values.config.taskQueue (printf "%s.%s" $root.Values.config.taskQueue $pool) (eq $pool "default") }}
{{- ternary $base (printf "%s.%s" $base $lane) (eq $lane "default") }}
{{- end }}

{{/* A pool's lanes, highest first (default: [default]): llm-stream.poolLanes $pool -> JSON list */}}
{{- define "llm-stream.poolLanes" -}}
{{- $given := default (list "default") .lanes }}
{{- $lanes := list }}
{{- range splitList "," (include "llm-stream.lanes" .) }}
{{- if has . $given }}{{ $lanes = append $lanes . }}{{ end }}
{{- end }}
{{- toJson $lanes }}
{{- end }}

{{/* Object name of a pool's workers: llm-stream.poolWorkerName (list . "large") */}}
{{- define "llm-stream.poolWorkerName" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $prefix := include "llm-stream.fullname" $root | trunc (min 52 (sub 55 (len $name)) | int) | trimSuffix "-" }}
{{- printf "%s-worker-%s" $prefix $name }}
{{- end }}

{{/*
Every pool's workers with their fallbacks applied, as a JSON list; read it with
`include "llm-stream.workerPools" . | fromJsonArray`. Each entry:
  name, implicit (true: no pools configured), where (the values path messages name),
  objectName, selector (labels beyond the component's), concurrency, replicaCount, model,
  baseUrl (effective, may be empty), keySecret ({name, key}, or {} for none), lanes, queues,
  queueName (of the KEDA trigger), regex, scaling {minReplicas, maxReplicas, tasksPerReplica,
  activationValue, cooldownPeriod, pollingInterval}, resources, nodeSelector, tolerations,
  affinity, extraEnv.
A field a pool leaves out (or sets to null) is the worker.* one (worker.keda.* for scaling).
*/}}
{{- define "llm-stream.workerPools" -}}
{{- $root := . }}
{{- $w := .Values.worker }}
{{- $k := $w.keda }}
{{- $globalBaseUrl := include "llm-stream.openaiBaseUrl" . }}
{{- $globalKey := dict }}
{{- if include "llm-stream.hasLlmKey" . }}
{{- $globalKey = dict "name" (include "llm-stream.llmSecretName" .) "key" (include "llm-stream.llmSecretKey" .) }}
{{- end }}
{{- $given := .Values.pools }}
{{- if not $given }}
{{- $given = list (dict "name" "default" "implicit" true) }}
{{- end }}
{{- $out := list }}
{{- range $i, $p := $given }}
{{- $implicit := hasKey $p "implicit" }}
{{- $s := default (dict) $p.scaling }}
{{- $u := default (dict) $p.upstream }}
{{- $e := dict "name" $p.name "implicit" $implicit }}
{{- if $implicit }}
{{- $_ := set $e "where" "worker" }}
{{- $_ := set $e "objectName" (include "llm-stream.componentName" (list $root "worker")) }}
{{- $_ := set $e "selector" (dict) }}
{{- else }}
{{- $_ := set $e "where" (printf "pools[%d] (%s)" $i $p.name) }}
{{- $_ := set $e "objectName" (include "llm-stream.poolWorkerName" (list $root $p.name)) }}
{{- $_ := set $e "selector" (dict (include "llm-stream.poolLabelKey" $root) $p.name) }}
{{- end }}
{{- range $key := list "concurrency" "replicaCount" "resources" "nodeSelector" "tolerations" "affinity" "extraEnv" }}
{{- $v := get $w $key }}
{{- if not (kindIs "invalid" (get $p $key)) }}{{ if hasKey $p $key }}{{ $v = get $p $key }}{{ end }}{{ end }}
{{- $_ := set $e $key $v }}
{{- end }}
{{- $_ := set $e "model" $root.Values.llm.model }}
{{- with $p.models }}{{ $_ := set $e "model" (first .) }}{{ end }}
{{- $_ := set $e "baseUrl" (default $globalBaseUrl $u.baseUrl) }}
{{- $_ := set $e "keySecret" $globalKey }}
{{- with $u.apiKeySecret }}
{{- $_ := set $e "keySecret" (dict "name" .name "key" (default "OPENAI_API_KEY" .key)) }}
{{- end }}
{{- $lanes := include "llm-stream.poolLanes" $p | fromJsonArray }}
{{- $_ := set $e "lanes" $lanes }}
{{- $queues := list }}
{{- $others := list }}
{{- range $lanes }}
{{- $queues = append $queues (include "llm-stream.laneQueue" (list $root $p.name .)) }}
{{- if ne . "default" }}{{ $others = append $others . }}{{ end }}
{{- end }}
{{- /* TASK_SHARDS: every lane's queue <q> is spread over <q>, <q>.s1 ... <q>.s<N-1>. */}}
{{- $shards := int (default 1 ($root.Values.rabbitmq.topology).taskShards) }}
{{- $sharded := list }}
{{- range $queues }}
{{- $q := . }}
{{- $sharded = append $sharded $q }}
{{- range $i := untilStep 1 $shards 1 }}{{ $sharded = append $sharded (printf "%s.s%d" $q $i) }}{{ end }}
{{- end }}
{{- $_ := set $e "queues" $sharded }}
{{- $base := include "llm-stream.laneQueue" (list $root $p.name "default") }}
{{- $_ := set $e "regex" (or (not (empty $others)) (gt $shards 1)) }}
{{- $_ := set $e "queueName" $base }}
{{- if $e.regex }}
{{- $lanePart := "" }}
{{- if $others }}{{ $lanePart = printf "(\\.(%s))?" (join "|" $others) }}{{ end }}
{{- $shardPart := "" }}
{{- if gt $shards 1 }}
{{- $keys := list }}
{{- range $i := untilStep 1 $shards 1 }}{{ $keys = append $keys (printf "s%d" $i) }}{{ end }}
{{- $shardPart = printf "(\\.(%s))?" (join "|" $keys) }}
{{- end }}
{{- $_ := set $e "queueName" (printf "^%s%s%s$" (regexQuoteMeta $base) $lanePart $shardPart) }}
{{- end }}
{{- $scaling := dict }}
{{- range $key := list "minReplicas" "maxReplicas" "tasksPerReplica" "activationValue" "cooldownPeriod" "pollingInterval" }}
{{- $v := get $k $key }}
{{- if not (kindIs "invalid" (get $s $key)) }}{{ if hasKey $s $key }}{{ $v = get $s $key }}{{ end }}{{ end }}
{{- $_ := set $scaling $key $v }}
{{- end }}
{{- /* Tasks per replica: the pool's own, else the pool's concurrency, else worker.keda's,
       else worker.concurrency: what one of its pods runs at once. */}}
{{- if and (kindIs "invalid" $s.tasksPerReplica) (not (kindIs "invalid" $p.concurrency)) }}
{{- $_ := set $scaling "tasksPerReplica" $p.concurrency }}
{{- end }}
{{- if kindIs "invalid" $scaling.tasksPerReplica }}
{{- $_ := set $scaling "tasksPerReplica" $e.concurrency }}
{{- end }}
{{- $_ := set $e "scaling" $scaling }}
{{- $out = append $out $e }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
LLM_POOLS as the API and the workers read it: the pools with their effective upstream URL and
concurrency, and nothing secret.
*/}}
{{- define "llm-stream.poolsJson" -}}
{{- $pools := list }}
{{- $effective := include "llm-stream.workerPools" . | fromJsonArray }}
{{- range $i, $p := .Values.pools }}
{{- $e := index $effective $i }}
{{- $entry := dict "name" $p.name "default" (eq $p.name (include "llm-stream.defaultPoolName" $)) "models" (default list $p.models) "aliases" (default dict $p.aliases) "lanes" $e.lanes "concurrency" ($e.concurrency | int) }}
{{- with $e.baseUrl }}{{ $_ := set $entry "base_url" . }}{{ end }}
{{- $pools = append $pools $entry }}
{{- end }}
{{- dict "pools" $pools | toPrettyJson }}
{{- end }}

{{- define "llm-stream.poolsConfigMapName" -}}
{{- include "llm-stream.componentName" (list . "pools") }}
{{- end }}

{{/* LLM_POOLS for a container's env, from the pools ConfigMap (nothing without pools). */}}
{{- define "llm-stream.poolsEnv" -}}
{{- if .Values.pools -}}
- name: LLM_POOLS
  valueFrom:
    configMapKeyRef:
      name: {{ include "llm-stream.poolsConfigMapName" . }}
      key: pools.json
{{- end }}
{{- end }}

{{/* Labels of a pool's worker objects: llm-stream.poolLabels (list . $pool) */}}
{{- define "llm-stream.poolLabels" -}}
{{ include "llm-stream.componentLabels" (list (index . 0) "worker") }}
{{ include "llm-stream.poolLabelKey" . }}: {{ (index . 1).name }}
{{- end }}

{{/* Selector of a pool's pods. Without pools the selector predates them and stays as it was
(a Deployment's selector cannot change). */}}
{{- define "llm-stream.poolSelectorLabels" -}}
{{ include "llm-stream.componentSelectorLabels" (list (index . 0) "worker") }}
{{- with (index . 1).selector }}
{{ toYaml . }}
{{- end }}
{{- end }}

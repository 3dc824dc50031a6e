{{/*
Names and labels.
*/}}
{{- define "llm-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-stream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects: llm-stream.componentName (list . "api") */}}
{{- define "llm-stream.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "llm-stream.fullname" $root | trunc 52 | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "llm-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-stream.labels" -}}
helm.sh/chart: {{ include "llm-stream.chart" . }}
{{ include "llm-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-stream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* llm-stream.componentSelectorLabels (list . "api") */}}
{{- define "llm-stream.componentSelectorLabels" -}}
{{ include "llm-stream.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* llm-stream.componentLabels (list . "api") */}}
{{- define "llm-stream.componentLabels" -}}
{{ include "llm-stream.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "llm-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-stream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* llm-stream.image (list . .Values.api.image) */}}
{{- define "llm-stream.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $ref := printf "%s/%s" $image.registry $image.repository | trimPrefix "/" }}
{{- if $image.digest }}
{{- printf "%s@%s" $ref $image.digest }}
{{- else }}
{{- printf "%s:%s" $ref (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
Broker. One source of truth for the AMQP URL, the management URL and the vhost: the workers'
RABBIT_MQ, the API's, and the KEDA trigger all read the same Secret keys, and the ScaledObject's
queue and vhost come from the same values as the workers' TASK_QUEUE and URL.

The mode (rabbitmq.mode) says where the broker is: `embedded` (the single-node StatefulSet of
templates/rabbitmq/), `operator` (a RabbitmqCluster the RabbitMQ Cluster Operator runs) or
`external` (a URL or an existing Secret). Empty: chosen by the keys that predate the modes, so
older values files keep working: internal.enabled is embedded, url or existingSecret.name is
external; none of them is "" (no broker, which validate refuses).
*/}}
{{- define "llm-stream.brokerMode" -}}
{{- $r := .Values.rabbitmq }}
{{- if $r.mode }}{{ $r.mode }}
{{- else if $r.internal.enabled }}embedded
{{- else if or $r.url $r.existingSecret.name }}external
{{- end }}
{{- end }}

{{- define "llm-stream.brokerEmbedded" -}}
{{- if eq (include "llm-stream.brokerMode" .) "embedded" }}true{{ end }}
{{- end }}

{{- define "llm-stream.brokerOperator" -}}
{{- if eq (include "llm-stream.brokerMode" .) "operator" }}true{{ end }}
{{- end }}

{{/* Name of the RabbitmqCluster, which is also its Service's. The operator names its
StatefulSet `<name>-server`, so the name stays within 45 characters. */}}
{{- define "llm-stream.rabbitmq.clusterName" -}}
{{- with .Values.rabbitmq.operator.name }}{{ . }}
{{- else }}{{ printf "%s-rabbitmq" (include "llm-stream.fullname" . | trunc 36 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The operator's Secret of the cluster's default user (keys username, password, host, port). */}}
{{- define "llm-stream.rabbitmq.defaultUserSecret" -}}
{{- printf "%s-default-user" (include "llm-stream.rabbitmq.clusterName" .) }}
{{- end }}

{{/* Name of the Service of a broker in the release (embedded or operator). */}}
{{- define "llm-stream.rabbitmq.serviceName" -}}
{{- if include "llm-stream.brokerOperator" . }}{{ include "llm-stream.rabbitmq.clusterName" . }}
{{- else }}{{ include "llm-stream.componentName" (list . "rabbitmq") }}
{{- end }}
{{- end }}

{{/* Selector of the broker pods in the release (the operator labels its pods with the
cluster's name). */}}
{{- define "llm-stream.rabbitmq.podSelector" -}}
{{- if include "llm-stream.brokerOperator" . -}}
app.kubernetes.io/name: {{ include "llm-stream.rabbitmq.clusterName" . }}
app.kubernetes.io/component: rabbitmq
{{- else -}}
{{ include "llm-stream.componentSelectorLabels" (list . "rabbitmq") }}
{{- end }}
{{- end }}

{{/* Fully-qualified name of the Service of a broker in the release: KEDA resolves it from its
own namespace. */}}
{{- define "llm-stream.rabbitmq.host" -}}
{{- printf "%s.%s.svc.%s" (include "llm-stream.rabbitmq.serviceName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "llm-stream.brokerSecretName" -}}
{{- default (include "llm-stream.fullname" .) .Values.rabbitmq.existingSecret.name }}
{{- end }}

{{- define "llm-stream.brokerUrlKey" -}}
{{- if .Values.rabbitmq.existingSecret.name }}{{ .Values.rabbitmq.existingSecret.urlKey }}{{ else }}RABBIT_MQ{{ end }}
{{- end }}

{{- define "llm-stream.brokerManagementUrlKey" -}}
{{- if .Values.rabbitmq.existingSecret.name }}{{ .Values.rabbitmq.existingSecret.managementUrlKey }}{{ else }}RABBITMQ_MANAGEMENT_URL{{ end }}
{{- end }}

{{/* The URLs of rabbitmq.url, a JSON list: one, or one per node when it is a comma-separated
list of node URLs (for brokers without a load-balanced address). */}}
{{- define "llm-stream.brokerUrls" -}}
{{- $urls := list }}
{{- range splitList "," .Values.rabbitmq.url }}
{{- with trim . }}{{ $urls = append $urls . }}{{ end }}
{{- end }}
{{- toJson $urls }}
{{- end }}

{{/* The first URL of rabbitmq.url: the host the management URL is derived from. */}}
{{- define "llm-stream.firstBrokerUrl" -}}
{{- with include "llm-stream.brokerUrls" . | fromJsonArray }}{{ first . }}{{ end }}
{{- end }}

{{/* The vhost of an AMQP URL, read as the AMQP client does: empty path or "/" is "/". */}}
{{- define "llm-stream.urlVhost" -}}
{{- $path := (urlParse .).path | trimPrefix "/" }}
{{- default "/" $path }}
{{- end }}

{{- define "llm-stream.vhost" -}}
{{- if or (include "llm-stream.brokerEmbedded" .) (include "llm-stream.brokerOperator" .) }}/
{{- else if .Values.rabbitmq.url }}{{ include "llm-stream.urlVhost" (include "llm-stream.firstBrokerUrl" .) }}
{{- else }}{{ default "/" .Values.rabbitmq.vhost }}
{{- end }}
{{- end }}

{{/* "host:port" of a URL with its default port filled in: llm-stream.hostPort "amqp://h/" */}}
{{- define "llm-stream.urlPort" -}}
{{- $u := urlParse . }}
{{- $m := regexFind ":[0-9]+$" $u.host }}
{{- if $m }}{{ trimPrefix ":" $m }}
{{- else }}{{ get (dict "amqp" "5672" "amqps" "5671" "http" "80" "https" "443") $u.scheme | default "443" }}
{{- end }}
{{- end }}

{{- define "llm-stream.rabbitmq.password" -}}
{{- if .Values.rabbitmq.internal.auth.password }}
{{- .Values.rabbitmq.internal.auth.password }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "llm-stream.fullname" .) }}
{{- if and $existing (hasKey $existing.data "RABBITMQ_PASSWORD") }}
{{- index $existing.data "RABBITMQ_PASSWORD" | b64dec }}
{{- else }}
{{- /* Generated once per render (install), remembered for the other includes. */}}
{{- if not (hasKey .Values.rabbitmq.internal.auth "_generated") }}
{{- $_ := set .Values.rabbitmq.internal.auth "_generated" (randAlphaNum 24) }}
{{- end }}
{{- .Values.rabbitmq.internal.auth._generated }}
{{- end }}
{{- end }}
{{- end }}

{{/* Changes when a credential given in the values changes, so that pods pick it up. */}}
{{- define "llm-stream.secretChecksum" -}}
{{- $r := .Values.rabbitmq }}
{{- list $r.url $r.managementUrl $r.managementPort $r.existingSecret $r.internal.enabled $r.internal.auth.username $r.internal.auth.password .Values.llm.apiKey .Values.llm.existingSecret (include "llm-stream.brokerMode" .) (include "llm-stream.rabbitmq.clusterName" .) | toJson | sha256sum }}
{{- end }}

{{/* The chart's Secret holds the broker URLs: the embedded broker's, or an external one's
given by rabbitmq.url. */}}
{{- define "llm-stream.brokerUrlsInChart" -}}
{{- if or (include "llm-stream.brokerEmbedded" .) (and (eq (include "llm-stream.brokerMode" .) "external") (not .Values.rabbitmq.existingSecret.name)) }}true{{ end }}
{{- end }}

{{- define "llm-stream.brokerUrl" -}}
{{- if include "llm-stream.brokerEmbedded" . }}
{{- printf "amqp://%s:%s@%s:5672/" .Values.rabbitmq.internal.auth.username (include "llm-stream.rabbitmq.password" .) (include "llm-stream.rabbitmq.host" .) }}
{{- else }}
{{- join "," (include "llm-stream.brokerUrls" . | fromJsonArray) }}
{{- end }}
{{- end }}

{{- define "llm-stream.brokerManagementUrl" -}}
{{- if include "llm-stream.brokerEmbedded" . }}
{{- printf "http://%s:%s@%s:15672" .Values.rabbitmq.internal.auth.username (include "llm-stream.rabbitmq.password" .) (include "llm-stream.rabbitmq.host" .) }}
{{- else if .Values.rabbitmq.managementUrl }}
{{- .Values.rabbitmq.managementUrl }}
{{- else }}
{{- $u := urlParse (include "llm-stream.firstBrokerUrl" .) }}
{{- $hostname := regexReplaceAll ":[0-9]+$" $u.host "" }}
{{- $scheme := ternary "https" "http" (eq $u.scheme "amqps") }}
{{- $auth := ternary (printf "%s@" $u.userinfo) "" (ne $u.userinfo "") }}
{{- printf "%s://%s%s:%v" $scheme $auth $hostname .Values.rabbitmq.managementPort }}
{{- end }}
{{- end }}

{{/* The management API of the operator's cluster, without credentials (KEDA gets them from
the operator's Secret through the TriggerAuthentication). */}}
{{- define "llm-stream.rabbitmq.operatorManagementHost" -}}
{{- printf "http://%s:15672" (include "llm-stream.rabbitmq.host" .) }}
{{- end }}

{{- define "llm-stream.rabbitmq.operatorAmqpHost" -}}
{{- printf "amqp://%s:5672/" (include "llm-stream.rabbitmq.host" .) }}
{{- end }}

{{/*
LLM.
*/}}
{{- define "llm-stream.llmSecretName" -}}
{{- default (include "llm-stream.fullname" .) .Values.llm.existingSecret.name }}
{{- end }}

{{- define "llm-stream.llmSecretKey" -}}
{{- if .Values.llm.existingSecret.name }}{{ .Values.llm.existingSecret.key }}{{ else }}OPENAI_API_KEY{{ end }}
{{- end }}

{{- define "llm-stream.hasLlmKey" -}}
{{- if or .Values.llm.apiKey .Values.llm.existingSecret.name }}true{{ end }}
{{- end }}

{{- define "llm-stream.openaiBaseUrl" -}}
{{- if .Values.llm.baseUrl }}
{{- .Values.llm.baseUrl }}
{{- else if .Values.mockllm.enabled }}
{{- printf "http://%s:%v/v1" (include "llm-stream.componentName" (list . "mockllm")) .Values.mockllm.port }}
{{- end }}
{{- end }}

{{/*
Shutdown arithmetic, in whole seconds. The grace periods must outlast the longest generation.
*/}}
{{- define "llm-stream.llmTimeout" -}}
{{- ceil .Values.llm.timeoutSeconds | int }}
{{- end }}

{{- define "llm-stream.worker.shutdownGrace" -}}
{{- if kindIs "invalid" .Values.worker.shutdownGraceSeconds }}
{{- include "llm-stream.llmTimeout" . }}
{{- else }}
{{- ceil .Values.worker.shutdownGraceSeconds | int }}
{{- end }}
{{- end }}

{{/* Seconds the worker pod may need after the kubelet starts stopping it. */}}
{{- define "llm-stream.worker.stopSeconds" -}}
{{- $drain := max (include "llm-stream.worker.shutdownGrace" . | int) (include "llm-stream.llmTimeout" . | int) }}
{{- add .Values.worker.preStopSleepSeconds $drain }}
{{- end }}

{{- define "llm-stream.worker.terminationGrace" -}}
{{- if kindIs "invalid" .Values.worker.terminationGracePeriodSeconds }}
{{- add (include "llm-stream.worker.stopSeconds" . | int) 15 }}
{{- else }}
{{- .Values.worker.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{- define "llm-stream.api.drain" -}}
{{- if kindIs "invalid" .Values.api.drainSeconds }}
{{- include "llm-stream.llmTimeout" . }}
{{- else }}
{{- ceil .Values.api.drainSeconds | int }}
{{- end }}
{{- end }}

{{- define "llm-stream.api.stopSeconds" -}}
{{- add .Values.api.preStopSleepSeconds (include "llm-stream.api.drain" . | int) }}
{{- end }}

{{- define "llm-stream.api.terminationGrace" -}}
{{- if kindIs "invalid" .Values.api.terminationGracePeriodSeconds }}
{{- add (include "llm-stream.api.stopSeconds" . | int) 15 }}
{{- else }}
{{- .Values.api.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Pod pieces shared by the api, worker and mockllm Deployments.
*/}}
{{- define "llm-stream.podSecurity" -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
serviceAccountName: {{ include "llm-stream.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "llm-stream.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* llm-stream.topologySpread (list . .Values.api.topologySpreadConstraints "api" [extra selector labels]) */}}
{{- define "llm-stream.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $selector := include "llm-stream.componentSelectorLabels" (list $root (index . 2)) | fromYaml }}
{{- if gt (len .) 3 }}{{ $selector = merge (dict) (index . 3) $selector }}{{ end }}
{{- range index . 1 }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* A value as a string; whole numbers without exponent or decimals (values are float64). */}}
{{- define "llm-stream.str" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . }}
{{- else }}{{ toString . }}
{{- end }}
{{- end }}

{{- define "llm-stream.np.dnsEgress" -}}
# DNS, wherever the cluster resolver runs.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* llm-stream.np.brokerEgress (list . ports) */}}
{{- define "llm-stream.np.brokerEgress" -}}
{{- $root := index . 0 -}}
# The broker: AMQP and the management API.
- ports:
    {{- range index . 1 }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if or (include "llm-stream.brokerEmbedded" $root) (include "llm-stream.brokerOperator" $root) }}
  to:
    - podSelector:
        matchLabels:
          {{- include "llm-stream.rabbitmq.podSelector" $root | nindent 10 }}
  {{- else if $root.Values.networkPolicy.broker.to }}
  to:
    {{- toYaml $root.Values.networkPolicy.broker.to | nindent 4 }}
  {{- end }}
{{- end }}

{{/* llm-stream.np.llmEgress (list . ports) */}}
{{- define "llm-stream.np.llmEgress" -}}
{{- $root := index . 0 -}}
# The LLM endpoint.
- ports:
    {{- range index . 1 }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if $root.Values.mockllm.enabled }}
  to:
    - podSelector:
        matchLabels:
          {{- include "llm-stream.componentSelectorLabels" (list $root "mockllm") | nindent 10 }}
  {{- else if $root.Values.networkPolicy.llm.to }}
  to:
    {{- toYaml $root.Values.networkPolicy.llm.to | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The Datadog Agent's Autodiscovery annotation for its OpenMetrics check (openmetrics_endpoint,
the check's V2): the Agent on each node scrapes that node's reapwatch. Datadog names gauges
reapwatch.<name> and counters reapwatch.<name>.count (monotonic counts; the check strips the
exposition's `_total`, hence the names without it), histograms .bucket/.sum/.count. Every
family of files/metrics.txt, the exporter's contract, is forwarded.
*/}}
{{- define "reapwatch.datadogAnnotations" -}}
{{- $metrics := list -}}
{{- range (.Files.Get "files/metrics.txt" | splitList "\n") -}}
{{- $fields := splitList " " (trim . | replace "\t" " ") | compact -}}
{{- if and (eq (len $fields) 2) (not (hasPrefix "#" (first $fields))) -}}
{{- $family := first $fields -}}
{{- $seen := ternary (trimSuffix "_total" $family) $family (eq (last $fields) "counter") -}}
{{- $metrics = append $metrics (dict $seen (trimPrefix "reapwatch_" $seen)) -}}
{{- end -}}
{{- end -}}
{{- $instance := dict
  "openmetrics_endpoint" (printf "%s://%%%%host%%%%:%v/metrics" (ternary "https" "http" .Values.tls.enabled) (.Values.ports.metrics | int))
  "namespace" "reapwatch"
  "metrics" $metrics -}}
ad.datadoghq.com/reapwatch.checks: {{ dict "openmetrics" (dict "init_config" dict "instances" (list $instance)) | toJson | quote }}
{{- end -}}

{{/*
The Datadog Agent's Autodiscovery annotation for its OpenMetrics check (openmetrics_endpoint,
the check's V2): the Agent on each node scrapes that node's reapwatch. Datadog names gauges
reapwatch.<name> and counters reapwatch.<name>.count (monotonic counts; the check strips the
exposition's `_total`, hence the names without it), histograms .bucket/.sum/.count. Every
family of files/metrics.txt, the exporter's contract, is forwarded.
*/}}

{{/*
What one node can send at most, each series a custom metric Datadog bills, from the exporter's
own limits: 63 series whatever the node runs (the lifetime histogram's 40 buckets with +Inf, sum
and count; the four node gauges and the node's forecast; the kubelet's pid.available, whether its
settings are known, its two thresholds and its forecast; build_info, events_lost, three
map_entries, three map_full, sample_failures, last_sample_timestamp, proc_skipped), 10 per
cgroup at most (zombies, oldest, created, reaped, forks, exits; pids current, max, forecast,
refused forks) for `--top-cgroups` cgroups, 2 per parent (zombies, wait age) for
`--top-parents` parents. The check's max_returned_metrics: it drops whatever comes past it.
*/}}
{{- define "reapwatch.datadogMaxMetrics" -}}
{{- add 63 (mul 10 .Values.datadog.topCgroups) (mul 2 .Values.datadog.topParents) -}}
{{- end -}}

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
  "metrics" $metrics
  "max_returned_metrics" (include "reapwatch.datadogMaxMetrics" . | int)
  "rename_labels" (dict "version" "reapwatch_version") -}}
{{- /* build_info's `version` is a tag Datadog reserves (unified service tagging). */ -}}
{{- if .Values.tls.enabled -}}
{{- /* The certificate names the Service, not the pod address the Agent connects to: the
Agent checks that name (sent as Host, which tls_use_host_header also verifies) against the
CA it mounts. */ -}}
{{- $_ := set $instance "tls_ca_cert" .Values.datadog.caFile -}}
{{- $_ := set $instance "tls_use_host_header" true -}}
{{- $_ := set $instance "extra_headers" (dict "Host" (include "reapwatch.serverName" .)) -}}
{{- end -}}
ad.datadoghq.com/reapwatch.checks: {{ dict "openmetrics" (dict "init_config" dict "instances" (list $instance)) | toJson | quote }}
{{- end -}}

{{/* `serve --cgroup-series`: as set, else `active` for Datadog (every series a billed custom
metric) and `all` for Prometheus alone. */}}
{{- define "reapwatch.cgroupSeries" -}}
{{- .Values.cgroupSeries | default (ternary "active" "all" .Values.datadog.enabled) -}}
{{- end -}}

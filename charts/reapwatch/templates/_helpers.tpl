{{/* The name of every object: the release's, or <release>-reapwatch, at most 63 bytes. */}}
{{- define "reapwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What selects the tracer's pods; never changes on upgrade. */}}
{{- define "reapwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "reapwatch.labels" -}}
{{ include "reapwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels kube-prometheus-stack's Prometheus selects its objects by, and the user's. */}}
{{- define "reapwatch.monitoringLabels" -}}
{{- with .root.Values.prometheusRelease }}
release: {{ . | quote }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "reapwatch.image" -}}
{{- $image := printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $image .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "reapwatch.priorityClassName" -}}
{{- if .Values.priorityClass.create -}}
{{- .Values.priorityClass.name | default (printf "%s-node-agent" (include "reapwatch.fullname" .)) -}}
{{- else -}}
{{- .Values.priorityClass.name -}}
{{- end -}}
{{- end -}}

{{/* The serving certificate's name, which Prometheus checks. */}}
{{- define "reapwatch.serverName" -}}
{{- printf "%s.%s.svc" (include "reapwatch.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
The kubelet's config paths to mount, each checked: never one that holds, or lies within,
the kubelet's or the control plane's credentials or the pods' volumes.
*/}}
{{- define "reapwatch.kubeletConfigPaths" -}}
{{- $sensitive := list "/var/lib/kubelet/pods" "/var/lib/kubelet/pki" "/var/lib/kubelet/kubeconfig" "/var/lib/kubelet/plugins" "/var/lib/kubelet/pod-resources" "/var/lib/kubelet/device-plugins" "/etc/kubernetes/pki" "/etc/kubernetes/kubelet.conf" "/etc/kubernetes/admin.conf" "/etc/kubernetes/bootstrap-kubelet.conf" "/var/run/secrets" "/run/secrets" -}}
{{- range $index, $path := .Values.kubelet.configPaths -}}
{{- range $sensitive -}}
{{- if or (eq $path .) (hasPrefix (printf "%s/" $path) .) (hasPrefix (printf "%s/" .) $path) -}}
{{- fail (printf "kubelet.configPaths: %s reaches %s, which holds credentials or pod volumes: name the kubelet's config file or drop-in directory itself" $path .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson .Values.kubelet.configPaths -}}
{{- end -}}

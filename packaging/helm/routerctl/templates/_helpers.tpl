{{/* Names and labels, as `helm create` makes them. */}}
{{- define "routerctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "routerctl.fullname" -}}
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

{{- define "routerctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "routerctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "routerctl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "routerctl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "routerctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "routerctl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "routerctl.backendKeysSecret" -}}
{{- default (printf "%s-backend-keys" (include "routerctl.fullname" .)) .Values.backendKeys.secretName }}
{{- end }}

{{/* The environment variables the config reads secrets from: every api_key_env, every
*password_env ([state] redis_password_env, [usage] kafka_password_env, [config_service]
password_env) and every value of a secret_headers inline table (comment lines skipped), plus
backendKeys.extraEnvNames; one per line. */}}
{{- define "routerctl.backendKeyEnvs" -}}
{{- $envName := "\"[A-Za-z_][A-Za-z0-9_]*\"" }}
{{- $names := list }}
{{- $secretKey := "\\b(api_key|[a-z_]*password)_env\\s*=\\s*" }}
{{- range regexFindAll (printf "(?m)^[^#\\n]*%s%s" $secretKey $envName) .Values.config -1 }}
{{- $setting := regexFind (printf "%s%s" $secretKey $envName) . }}
{{- $names = append $names (regexFind $envName $setting | trimAll "\"") }}
{{- end }}
{{- range regexFindAll "(?m)^[^#\\n]*\\bsecret_headers\\s*=\\s*\\{[^}\\n]*\\}" .Values.config -1 }}
{{- range regexFindAll (printf "=\\s*%s" $envName) . -1 }}
{{- $names = append $names (regexFind $envName . | trimAll "\"") }}
{{- end }}
{{- end }}
{{- range (concat $names .Values.backendKeys.extraEnvNames | uniq) }}
{{ . }}
{{- end }}
{{- end }}

{{/* [server] graceful_shutdown_s from the config; routerctl's default (30) when absent. */}}
{{- define "routerctl.gracefulShutdownSeconds" -}}
{{- $found := regexFind "(?m)^\\s*graceful_shutdown_s\\s*=\\s*[0-9]+(\\.[0-9]+)?" .Values.config }}
{{- if $found }}
{{- regexReplaceAll "^.*=\\s*" $found "" | float64 | ceil | int }}
{{- else }}30{{ end }}
{{- end }}

{{/* Pod grace: long enough for the preStop sleep and the router's own drain. */}}
{{- define "routerctl.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "routerctl.gracefulShutdownSeconds" .)) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds=%v is below preStopSleepSeconds + graceful_shutdown_s = %d: requests still draining would be killed" .Values.terminationGracePeriodSeconds $needed) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

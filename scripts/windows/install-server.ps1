<#
.SYNOPSIS
  Install dpmsfs-server as a Windows service (one of the central HA pair), as Administrator.

.DESCRIPTION
  Runs dpmsfs-server under WinSW (https://github.com/winsw/winsw, MIT): a single
  executable that turns any command line into a service, with restart on failure, log
  files with rotation and a graceful stop (it sends Ctrl+C, which dpmsfs-server handles
  like SIGTERM: it finishes its requests and exits 0). Why WinSW rather than NSSM (no
  release since 2017) or a pywin32 service class in remote/ (a Windows-only dependency
  and service code that could not be run or tested on the project's Linux CI): the
  server stays the same plain program on both systems, and the service definition is
  one XML file next to this script's output, readable and versioned.

  Layout (defaults; every path is a parameter):
    C:\Program Files\dpmsfs\venv          Python virtualenv with the dpmsfs package
    C:\Program Files\dpmsfs\src           a copy of the sources it was installed from
    C:\Program Files\dpmsfs\service\      dpmsfs-server.exe (WinSW) and dpmsfs-server.xml
    D:\dpmsfs\data                        the data directory: put it on the RAID volume
    D:\dpmsfs\logs                        service logs (WinSW rotates them)
    D:\dpmsfs\tls\server.crt, server.key  TLS certificate chain and key (PEM), if -Tls

  Not tested on Windows here (the project's machines run Linux): see
  docs/operations.md, "The server as a Windows service".

.EXAMPLE
  .\install-server.ps1 -WinSW C:\Downloads\WinSW-x64.exe -DataDir D:\dpmsfs\data `
      -Listen 0.0.0.0:8765 -TlsCert D:\dpmsfs\tls\server.crt -TlsKey D:\dpmsfs\tls\server.key
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $WinSW,
    [string] $DataDir = 'D:\dpmsfs\data',
    [string] $LogDir = 'D:\dpmsfs\logs',
    [string] $Listen = '0.0.0.0:8765',
    [string] $TlsCert = '',
    [string] $TlsKey = '',
    [string] $InstallDir = "$env:ProgramFiles\dpmsfs",
    [string] $Python = 'py',
    [string] $ServiceName = 'dpmsfs-server',
    [string] $RemoteAddress = 'LocalSubnet'
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Fail([string] $message) { Write-Error "install-server: $message"; exit 1 }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 'run as Administrator'
}
if (-not (Test-Path $WinSW -PathType Leaf)) { Fail "${WinSW}: WinSW executable not found" }
if (($TlsCert -eq '') -ne ($TlsKey -eq '')) { Fail '-TlsCert and -TlsKey go together' }
foreach ($f in @($TlsCert, $TlsKey)) {
    if ($f -ne '' -and -not (Test-Path $f -PathType Leaf)) { Fail "${f}: not found" }
}
if ($Listen -notmatch '^(.+):(\d{1,5})$') { Fail "-Listen must be HOST:PORT, not $Listen" }
$port = [int] $Matches[2]
$repo = (Resolve-Path (Join-Path $PSScriptRoot '..\..')).Path

# 1. The package, into a virtualenv of its own (pyfuse3 is Linux-only and skipped).
New-Item -ItemType Directory -Force -Path $InstallDir, "$InstallDir\service", $DataDir, $LogDir | Out-Null
$src = Join-Path $InstallDir 'src'
if (Test-Path $src) { Remove-Item -Recurse -Force $src }
New-Item -ItemType Directory -Path $src | Out-Null
Get-ChildItem -Force $repo | Where-Object { $_.Name -notin @('.git', '.venv', 'build') } |
    Copy-Item -Destination $src -Recurse -Force
$venv = Join-Path $InstallDir 'venv'
if (-not (Test-Path "$venv\Scripts\python.exe")) {
    & $Python -3.11 -m venv $venv
    if ($LASTEXITCODE -ne 0) { Fail "could not create $venv with '$Python -3.11' (install Python 3.11+)" }
}
& "$venv\Scripts\python.exe" -m pip install -q --upgrade pip
& "$venv\Scripts\python.exe" -m pip install -q $src
if ($LASTEXITCODE -ne 0) { Fail 'pip install failed (see above)' }

# 2. The service definition for WinSW.
$arguments = "--data `"$DataDir`" --listen $Listen"
if ($TlsCert -ne '') { $arguments += " --tls-cert `"$TlsCert`" --tls-key `"$TlsKey`"" }
$exe = Join-Path "$InstallDir\service" "$ServiceName.exe"
Copy-Item -Force $WinSW $exe
$xml = @"
<service>
  <id>$ServiceName</id>
  <name>dpmsfs central object store</name>
  <description>dpmsfs-server: history of the test tools' work directories (docs/operations.md)</description>
  <executable>$venv\Scripts\dpmsfs-server.exe</executable>
  <arguments>$([Security.SecurityElement]::Escape($arguments))</arguments>
  <workingdirectory>$DataDir</workingdirectory>
  <startmode>Automatic</startmode>
  <delayedAutoStart>true</delayedAutoStart>
  <stoptimeout>60 sec</stoptimeout>
  <onfailure action="restart" delay="2 sec"/>
  <onfailure action="restart" delay="10 sec"/>
  <resetfailure>1 hour</resetfailure>
  <logpath>$LogDir</logpath>
  <log mode="roll-by-size">
    <sizeThreshold>10240</sizeThreshold>
    <keepFiles>8</keepFiles>
  </log>
</service>
"@
Set-Content -Path (Join-Path "$InstallDir\service" "$ServiceName.xml") -Value $xml -Encoding UTF8

# 3. The data directory: the service account (LocalSystem by default) and Administrators only.
icacls $DataDir /inheritance:r /grant:r 'SYSTEM:(OI)(CI)F' 'Administrators:(OI)(CI)F' | Out-Null
if ($TlsKey -ne '') { icacls $TlsKey /inheritance:r /grant:r 'SYSTEM:R' 'Administrators:F' | Out-Null }

# 4. Install (or reinstall) and start the service.
if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
    & $exe stop | Out-Null
    & $exe uninstall | Out-Null
}
& $exe install
if ($LASTEXITCODE -ne 0) { Fail 'WinSW could not install the service' }

# 5. The firewall: the port, from the tools' subnet only (-RemoteAddress to narrow it).
$rule = "dpmsfs-server TCP $port"
Get-NetFirewallRule -DisplayName $rule -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -DisplayName $rule -Direction Inbound -Protocol TCP -LocalPort $port `
    -RemoteAddress $RemoteAddress -Action Allow -Profile Domain,Private | Out-Null

& $exe start
if ($LASTEXITCODE -ne 0) { Fail "the service did not start: see $LogDir" }
$scheme = if ($TlsCert -ne '') { 'https' } else { 'http' }
Write-Host "install-server: $ServiceName running; check: curl.exe ${scheme}://<this host>:${port}/v2/health"
Write-Host "install-server: the admin token is in $DataDir\tokens.json (created on first start)"

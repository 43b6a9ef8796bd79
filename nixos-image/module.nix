# services.larder: larder as a NixOS service.
#
# `settings` is larder's config file (RFC 42: any key larder accepts, written as
# TOML), with typed options for `listen` and `data_dir`. Caches, tokens, S3 keys
# and buckets declared there are made so on every start. Secrets never go into
# `settings` (it ends up in the world-readable Nix store): each has a `*File`
# option taking a path outside the store, handed to larder with LoadCredential.
# nixos-image/settings.nix maps options to config keys; tests/nix_files.rs checks
# that mapping against the binary.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;

  cfg = config.services.larder;
  format = pkgs.formats.toml { };
  mapping = import ./settings.nix;

  # A secret file: an absolute path, as a string, outside the Nix store. A Nix
  # path literal (./secret) is refused: it would be copied into the store.
  secretFile = types.addCheck types.str
    (p: lib.hasPrefix "/" p && !(lib.hasPrefix "${builtins.storeDir}/" p))
  // {
    name = "secretFile";
    description = "absolute path to a secret outside the Nix store, as a string";
  };
  # `address:port` as larder parses it (a socket address, no host name):
  # "0.0.0.0:8080", "[::]:8080".
  validListen = a:
    let
      m = builtins.match "(([0-9]+)[.]([0-9]+)[.]([0-9]+)[.]([0-9]+)|\\[([0-9a-fA-F:.]*:[0-9a-fA-F:.]*)])(:([0-9]+))" a;
      octets = if m == null then [ ] else lib.sublist 1 4 m;
      port = if m == null then null else lib.last m;
    in
    m != null
    && builtins.all (o: o == null || (builtins.stringLength o <= 3 && lib.toInt o <= 255)) octets
    && builtins.stringLength port <= 5 && lib.toInt port <= 65535;
  listenAddress = types.addCheck types.str validListen // {
    name = "listenAddress";
    description = "IP address and port, such as \"0.0.0.0:8080\" or \"[::]:8080\" (no host name)";
  };
  nullOrSecret = description: mkOption {
    type = types.nullOr secretFile;
    default = null;
    example = "/run/secrets/larder";
    inherit description;
  };

  rendered = mapping.render {
    settings = lib.filterAttrsRecursive (_: v: v != null) cfg.settings;
    inherit (cfg) adminTokenFile tlsKeyFile acmeEabKidFile acmeEabHmacFile signingKeyFiles nixosProxy;
    s3KeyFiles = lib.mapAttrs
      (_: k: { inherit (k) accessKeyIdFile secretAccessKeyFile; })
      cfg.s3KeyFiles;
  };
  configFile = format.generate "larder.toml" cfg.finalSettings;
  # Checked at build time: a typo fails the build, not the boot.
  checkedConfig = pkgs.runCommand "larder-checked.toml" { } ''
    ${lib.getExe cfg.package} check-config --quiet ${configFile}
    cp ${configFile} $out
  '';

  stateDir = lib.removePrefix "/var/lib/" cfg.settings.data_dir;
  portOf = addr: lib.toInt (lib.last (lib.splitString ":" addr));
  tlsListen = cfg.settings.tls.listen or [ ];
  ports = [ (portOf cfg.settings.listen) ]
    ++ map portOf (if builtins.isList tlsListen then tlsListen else [ tlsListen ])
    ++ lib.optional (cfg.settings.s3_listen != null) (portOf cfg.settings.s3_listen);
  # Ports below 1024 (80 and 443 for ACME) need CAP_NET_BIND_SERVICE, which only
  # works on the host's network without PrivateUsers=.
  lowPorts = builtins.any (p: p < 1024) ports;

  # `larder-admin cache list`, `larder-admin token create ...`: the CLI on the data
  # dir, as the service's (dynamic) user, with the service's config.
  adminWrapper = pkgs.writeShellScriptBin "larder-admin" ''
    exec ${config.systemd.package}/bin/systemd-run \
      --quiet --pipe --wait --collect --service-type=exec \
      --property=DynamicUser=yes \
      --property=User=larder \
      --property=Group=larder \
      --property=StateDirectory=${stateDir} \
      --setenv=LARDER_CONFIG=${checkedConfig} \
      --setenv=LARDER_DATA_DIR=${cfg.settings.data_dir} \
      --setenv=HOME=/var/empty \
      --working-directory=/ \
      -- ${lib.getExe cfg.package} "$@"
  '';
in
{
  options.services.larder = {
    enable = lib.mkEnableOption "larder, a private Nix binary cache";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The larder package.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP ports of `listen`, `tls.listen` and `s3_listen` in the firewall.";
    };

    settings = mkOption {
      default = { };
      description = ''
        larder's config file, as TOML (every key: docs/deploy.md). Declared
        `caches`, `tokens`, `s3_keys` and `s3_buckets` are made so on every start.
        Secrets do not belong here: use the `*File` options.
      '';
      example = lib.literalExpression ''
        {
          caches = [ { name = "default"; } ];
          tokens = [ {
            sub = "ci"; validity = "1y"; file = "tokens/ci.token";
            pull = [ "default" ]; push = [ "default" ];
          } ];
        }
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          listen = mkOption {
            type = listenAddress;
            default = if config.networking.enableIPv6 then "[::]:8080" else "0.0.0.0:8080";
            defaultText = lib.literalExpression ''if networking.enableIPv6 then "[::]:8080" else "0.0.0.0:8080"'';
            description = "Address and port of the plain HTTP listener.";
          };
          data_dir = mkOption {
            type = types.strMatching "/var/lib/[^/].*";
            default = "/var/lib/larder";
            description = ''
              Where larder keeps its chunks and metadata. It is the service's
              `StateDirectory=` (owned by its dynamic user), so it lies under /var/lib.
            '';
          };
          s3_listen = mkOption {
            type = types.nullOr listenAddress;
            default = null;
            example = "[::]:9000";
            description = "Address and port of the S3 API's own listener; off when null.";
          };
        };
      };
    };

    finalSettings = mkOption {
      type = format.type;
      readOnly = true;
      internal = true;
      default = rendered.settings;
      description = ''
        The config file larder runs with, as Nix values: `settings` with each secret
        named by its credential. Generated as TOML and checked by `larder check-config`
        at build time.
      '';
    };

    adminTokenFile = nullOrSecret ''
      A file holding the admin token (at least 32 characters). Without it, larder
      makes one in `data_dir/admin.token` on first start.
    '';
    tlsKeyFile = nullOrSecret "The private key of `tls.cert_file` (static HTTPS).";
    acmeEabKidFile = nullOrSecret "ACME External Account Binding: the key id.";
    acmeEabHmacFile = nullOrSecret "ACME External Account Binding: the HMAC key.";

    signingKeyFiles = mkOption {
      type = types.attrsOf secretFile;
      default = { };
      example = { default = "/run/secrets/larder-default-signing-key"; };
      description = ''
        Nix signing keys (`nix-store --generate-binary-cache-key`), by cache name.
        A cache named here without an entry in `settings.caches` is declared too.
        Caches without one keep the key larder generated when it created them.
      '';
    };

    nixosProxy = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9][A-Za-z0-9_+-]{0,49}");
      default = null;
      example = "nixos";
      description = ''
        The name of a public cache that proxies cache.nixos.org: what it does not
        hold it fetches once, checks against cache.nixos.org's key, keeps and
        serves to every machine of the LAN (docs/deploy.md). Sets that cache's
        `public` and `upstreams` in `settings.caches`, declaring it if needed.
        Clients run `larder use NAME --write` (or list it first in
        `nix.settings.substituters`).
      '';
    };

    s3KeyFiles = mkOption {
      default = { };
      description = ''
        Credentials of S3 access keys, by key name; grants go in
        `settings.s3_keys` (`{ name = ...; buckets = [ ... ]; }`).
      '';
      type = types.attrsOf (types.submodule {
        options = {
          accessKeyIdFile = mkOption {
            type = secretFile;
            description = "A file holding the access key id.";
          };
          secretAccessKeyFile = mkOption {
            type = secretFile;
            description = "A file holding the secret access key.";
          };
        };
      });
    };
  };

  config = lib.mkIf cfg.enable {
    # Mistakes a type cannot see, named by option, before anything is built.
    assertions =
      let
        opt = "services.larder.settings";
        unknown = mapping.unknownKeys cfg.settings;
        inStore = v: builtins.isPath v
          || (builtins.isString v && lib.hasPrefix "${builtins.storeDir}/" v);
        storeSecrets = builtins.filter (e: inStore e.value)
          (builtins.concatMap (mapping.valuesAt cfg.settings) mapping.secretKeys);
        tls = cfg.settings.tls or { };
        tlsListen = if builtins.isList (tls.listen or [ ]) then tls.listen or [ ] else [ tls.listen ];
        acme = tls.acme or null;
      in
      [
        {
          assertion = unknown == [ ];
          message = "${opt}: larder's config file has no key ${lib.concatMapStringsSep ", " (k: "`${k}`") unknown} "
            + "(every key: docs/deploy.md).";
        }
        {
          assertion = storeSecrets == [ ];
          message = "${opt}: ${lib.concatMapStringsSep ", " (e: "`${e.key}`") storeSecrets} "
            + "names a secret in the world-readable Nix store. Give the file with the matching "
            + "services.larder.*File option (adminTokenFile, tlsKeyFile, acmeEabKidFile, "
            + "acmeEabHmacFile, signingKeyFiles, s3KeyFiles) as a path outside the store.";
        }
        {
          assertion = builtins.all (a: builtins.isString a && validListen a) tlsListen;
          message = "${opt}.tls.listen: ${builtins.toJSON tls.listen} is not an IP address and port "
            + "(such as \"0.0.0.0:443\" or \"[::]:443\"; no host name), or a list of them.";
        }
        {
          assertion = acme == null || (builtins.isList (acme.domains or null) && acme.domains != [ ]);
          message = "${opt}.tls.acme.domains: ACME needs at least one domain to get a certificate for "
            + "(such as [ \"cache.example.com\" ]).";
        }
      ];

    environment.systemPackages = [ adminWrapper ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall ports;

    systemd.services.larder = {
      description = "larder, a private Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ checkedConfig ];
      environment.LARDER_LOG = lib.mkDefault "info";
      serviceConfig = {
        Type = "exec";
        ExecStart = "${lib.getExe cfg.package} serve --config ${checkedConfig}";
        DynamicUser = true;
        User = "larder";
        Group = "larder";
        StateDirectory = stateDir;
        StateDirectoryMode = "0700";
        LoadCredential = rendered.credentials;
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStopSec = 60;
        # Every connection is a file; larder raises its soft limit to this.
        LimitNOFILE = 65536;

        # The hardening list of nixpkgs' atticd module, but for ports below 1024.
        AmbientCapabilities = lib.mkIf lowPorts [ "CAP_NET_BIND_SERVICE" ];
        CapabilityBoundingSet = if lowPorts then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        DeviceAllow = "";
        DevicePolicy = "closed";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateTmp = true;
        PrivateUsers = !lowPorts;
        ProcSubset = "pid";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@resources" "~@privileged" ];
        UMask = "0077";
      };
    };
  };
}

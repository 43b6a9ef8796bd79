# What tests/nix_eval.rs evaluates: larder's flake as a NixOS user imports it.
# Both inputs are overridden by the test (`--override-input larder git+file://…`,
# `--override-input nixpkgs tarball+file://…`); nothing here is ever built.
{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  inputs.larder.url = "path:../../..";
  inputs.larder.inputs.nixpkgs.follows = "nixpkgs";

  outputs = { nixpkgs, larder, ... }:
    let
      system = "x86_64-linux";
      appliance = larder.nixosConfigurations.appliance;
      # A machine that imports the module, and nothing of the appliance.
      machine = modules: nixpkgs.lib.nixosSystem {
        modules = [
          larder.nixosModules.default
          {
            nixpkgs.hostPlatform = system;
            system.stateVersion = "25.11";
            boot.loader.grub.enable = false;
            fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
            services.larder.enable = true;
          }
        ] ++ modules;
      };
      # Every section larder's config file has: TLS with ACME (and EAB), S3 keys
      # and buckets, declared caches and tokens, every secret as a credential.
      every = machine [{
        services.larder = {
          openFirewall = true;
          settings = {
            listen = "0.0.0.0:80";
            s3_listen = "[::]:9000";
            public_url = "https://cache.example.com";
            s3_region = "eu-1";
            s3_host = "s3.example.com";
            zstd_level = 9;
            gc = { interval = "30m"; default_retention = "90d"; max_size = "80%"; low_water = "85%"; compact_below = "75%"; };
            allowed_hosts = [ "cache.example.com" ];
            trusted_upload_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            tls = {
              listen = [ "0.0.0.0:443" "[::]:443" ];
              redirect_exempt_cidrs = [ "127.0.0.0/8" ];
              redirect_exempt_paths = [ "/nix-cache-info" ];
              acme = {
                domains = [ "cache.example.com" ];
                contact = "admin@example.com";
                directory = "letsencrypt-staging";
              };
            };
            caches = [
              { name = "default"; public = true; priority = 30; }
              { name = "team"; retention_period = 604800; }
            ];
            tokens = [{
              sub = "ci";
              validity = "1y";
              file = "tokens/ci.token";
              pull = [ "default" "team" ];
              push = [ "team" ];
              create_cache = [ "ci-*" ];
            }];
            s3_keys = [{ name = "restic"; buckets = [{ pattern = "backups-*"; read = true; write = true; }]; }];
            s3_buckets = [{ name = "backups-host"; }];
          };
          adminTokenFile = "/run/secrets/larder-admin";
          acmeEabKidFile = "/run/secrets/eab-kid";
          acmeEabHmacFile = "/run/secrets/eab-hmac";
          signingKeyFiles.team = "/run/secrets/team.sk";
          s3KeyFiles.restic = {
            accessKeyIdFile = "/run/secrets/restic-id";
            secretAccessKeyFile = "/run/secrets/restic-secret";
          };
        };
      }];
      # Static TLS instead of ACME (the two exclude each other): the key as a
      # credential.
      staticTls = machine [{
        services.larder = {
          settings.tls = { listen = "[::]:8443"; cert_file = "/etc/larder/cert.pem"; };
          tlsKeyFile = "/run/secrets/larder-tls.key";
        };
      }];
      # The unit's [Service] settings, as systemd gets them.
      unitOf = c: c.config.systemd.units."larder.service".text;
      drv = d: d.drvPath;
      # Settings a user gets wrong: each must fail to evaluate, naming the option
      # (tests/nix_eval.rs says which).
      bad = builtins.mapAttrs (_: m: (machine [{ services.larder = m; }]).config.system.build.toplevel.drvPath) {
        admin-token-in-store.adminTokenFile = "${builtins.storeDir}/00000000000000000000000000000000-admin.token";
        tls-key-path-literal.tlsKeyFile = ./flake.nix;
        signing-key-in-store-via-settings.settings.caches = [{ name = "default"; signing_key_file = "${./flake.nix}"; }];
        relative-signing-key.signingKeyFiles.default = "keys/default.sk";
        relative-data-dir.settings.data_dir = "larder";
        listen-host-name.settings.listen = "localhost:8080";
        tls-listen-no-port.settings.tls = { listen = "0.0.0.0"; cert_file = "/etc/larder/cert.pem"; };
        unknown-key.settings.listen_addr = "[::]:8080";
        unknown-nested-key.settings.tls.acme = { domain = "cache.example.com"; domains = [ "cache.example.com" ]; };
        acme-without-domain.settings.tls.acme.contact = "admin@example.com";
      };
    in
    {
      inherit bad;
      facts = {
        # The images and the package: `nix flake check` prints theirs.
        drvPaths = {
          toplevel = drv appliance.config.system.build.toplevel;
          vm-test-driver = drv larder.checks.${system}.vm.driver;
        };
        appliance = {
          # The config file's contents (as JSON; the module writes them as TOML).
          settings = builtins.toJSON appliance.config.services.larder.finalSettings;
          unit = unitOf appliance;
          keysScript = appliance.config.systemd.services.larder-keys.script;
          keysUnit = appliance.config.systemd.units."larder-keys.service".text;
          consoleScript = appliance.config.systemd.services.larder-console-message.script;
        };
        every = {
          settings = builtins.toJSON every.config.services.larder.finalSettings;
          unit = unitOf every;
          toplevel = drv every.config.system.build.toplevel;
          firewall = every.config.networking.firewall.allowedTCPPorts;
        };
        staticTls = {
          settings = builtins.toJSON staticTls.config.services.larder.finalSettings;
          unit = unitOf staticTls;
        };
        # The option documentation of services.larder, as the NixOS manual renders it.
        optionDocs = (nixpkgs.legacyPackages.${system}.nixosOptionsDoc {
          options = { inherit (every.options.services) larder; };
        }).optionsNix;
      };
    };
}

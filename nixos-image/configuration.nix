# The larder appliance: a NixOS system that is a LAN Nix binary cache and nothing
# else. flake.nix builds it as a qcow2 or raw EFI disk image and as an ISO.
#
# Nothing secret is baked into the image: on first boot larder-keys.service makes
# the admin token and the `default` cache's signing key, and larder mints a push
# token. The console then shows the substituter URL and the public key.
{ config, lib, pkgs, ... }:
let
  keysDir = "/var/lib/larder-keys";
  # The signing key's name, as clients see it in trusted-public-keys.
  keyName = "${config.networking.hostName}-default-1";
  port = 8080;
in
{
  system.stateVersion = "25.11";

  networking.hostName = lib.mkDefault "larder";
  networking.useDHCP = lib.mkDefault true;
  networking.firewall.enable = true;

  # A disk layout for the plain system; the image variants bring their own.
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = lib.mkDefault {
    device = "/dev/disk/by-label/ESP";
    fsType = "vfat";
  };
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  boot.loader.grub.enable = lib.mkDefault false;
  # The ISO boots with its own loader.
  image.modules.iso = {
    boot.loader.systemd-boot.enable = lib.mkForce false;
  };

  # Log in on the console as root (set a password or SSH key before exposing it).
  services.getty.autologinUser = lib.mkDefault "root";

  services.larder = {
    enable = true;
    openFirewall = true;
    settings = {
      listen = "0.0.0.0:${toString port}";
      caches = [{ name = "default"; }];
      tokens = [{
        sub = "push-default";
        validity = "10y";
        file = "tokens/push.token";
        pull = [ "default" ];
        push = [ "default" ];
      }];
    };
    adminTokenFile = "${keysDir}/admin.token";
    signingKeyFiles.default = "${keysDir}/default.sk";
  };

  # First boot: the machine's own keys, never the image's.
  systemd.services.larder-keys = {
    description = "Make larder's admin token and signing key on first boot";
    wantedBy = [ "multi-user.target" ];
    before = [ "larder.service" ];
    requiredBy = [ "larder.service" ];
    unitConfig.ConditionPathExists = "!${keysDir}/default.sk";
    path = [ config.nix.package pkgs.coreutils ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      StateDirectory = "larder-keys";
      StateDirectoryMode = "0700";
      UMask = "0077";
    };
    script = ''
      od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > ${keysDir}/admin.token
      nix-store --generate-binary-cache-key ${keyName} ${keysDir}/default.sk.new ${keysDir}/default.pk
      mv ${keysDir}/default.sk.new ${keysDir}/default.sk
    '';
  };

  # What a client needs, on the console and above the login prompt.
  systemd.services.larder-console-message = {
    description = "Show the larder substituter URL and public key";
    wantedBy = [ "multi-user.target" ];
    after = [ "larder.service" "network-online.target" ];
    wants = [ "network-online.target" ];
    requires = [ "larder.service" ];
    path = [ pkgs.iproute2 pkgs.gawk pkgs.coreutils ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      StandardOutput = "journal+console";
    };
    script = ''
      addr=$(ip -4 -o addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
      msg=$(printf '%s\n' \
        "larder, a private Nix binary cache" \
        "  substituter:  http://''${addr:-<this machine>}:${toString port}/default" \
        "  public key:   $(cat ${keysDir}/default.pk)" \
        "  push token:   /var/lib/larder/tokens/push.token (root only)" \
        "  admin:        larder-admin cache list")
      echo "$msg"
      mkdir -p /run/issue.d
      printf '%s\n\n' "$msg" > /run/issue.d/50-larder.issue
    '';
  };
}
